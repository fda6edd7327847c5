"""Dataset sources behind the ``config.dataset`` spec string, and split arithmetic.

Spec forms:

* ``digits``: scikit-learn's bundled handwritten digits (no download). 1797
  8x8 grayscale images, values 0..16 scaled to uint8 0..255, 10 classes, 1
  channel. Base splits, in ``load_digits`` order: ``train`` = examples
  [0, 1437), ``test`` = examples [1437, 1797).
* ``tfds:NAME``: a TFDS image classification dataset with features ``image``
  and ``label``, read from ``data.data_dir``. It must be prepared beforehand
  (for ImageNet: tfds' manual download into ``DATA_DIR/downloads/manual`` and
  ``download_and_prepare``). Base splits are the dataset's own. Images are
  decoded to RGB (3 channels).
* ``folder:PATH``: ``PATH/SPLIT/CLASS/*.{jpg,jpeg,png,bmp,gif,webp}``; the
  base split is the subdirectory name (``train``, ``val``, ...). Classes are
  the sorted subdirectories of ``PATH/train`` when it exists (so labels agree
  between splits), otherwise of the split directory. Examples are ordered by
  class, then file name. Images are decoded to RGB (3 channels).

Split strings follow TFDS (``train``, ``train[:80%]``, ``train[10:200]``,
``train[:-100]``...) for every source and are resolved with TFDS' own code, so
boundaries match TFDS exactly. Every example's id is its index in the base
split: for TFDS, the index in the canonical (unshuffled, file-sequential)
order.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import types

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DIGITS_TRAIN_SIZE = 1437
SPEC_FORMS = "'digits', 'tfds:NAME' or 'folder:PATH'"


# ------------------------------------------------------------------- splits


def resolve_split(split: str, source) -> tuple[str, int, int]:
    """Turns a TFDS-style split string into (base split, start, stop) on the base split.

    ``source.split_size(base)`` gives the base split's size (and raises for an
    unknown base); a source with ``split_infos`` (TFDS' SplitDict) passes it on,
    which also enables TFDS' shard-unit slicing.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    try:
        instruction = tfds.core.ReadInstruction.from_spec(split)
    except (ValueError, NotImplementedError) as e:
        raise ValueError(f"invalid split {split!r}: {e}") from e
    if not isinstance(instruction, tfds.core.ReadInstruction):
        raise ValueError(f"split {split!r} must select one base split (no '+' or 'all')")
    base = instruction.split_name
    n = source.split_size(base)
    split_infos = getattr(source, "split_infos", None) or {
        base: types.SimpleNamespace(num_examples=n, shard_lengths=[n])}
    try:
        (absolute,) = instruction.to_absolute(split_infos)
    except ValueError as e:
        raise ValueError(f"invalid split {split!r} for a base split of {n} examples: {e}") from e
    start = 0 if absolute.from_ is None else absolute.from_
    stop = n if absolute.to is None else absolute.to
    return base, start, max(start, stop)


def host_range(start: int, stop: int, process_index: int, process_count: int) -> tuple[int, int]:
    """This host's contiguous part of [start, stop), split into near-equal parts.

    The first ``(stop - start) % process_count`` hosts get one example more
    (the same parts as ``tfds.even_splits``).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    per_host, extra = divmod(stop - start, process_count)
    lo = start + process_index * per_host + min(process_index, extra)
    return lo, lo + per_host + (1 if process_index < extra else 0)


# ------------------------------------------------------------ image decode


def decode_image(data: bytes | str) -> np.ndarray:
    """Decodes encoded image bytes or a file path to uint8 RGB [H, W, 3] with PIL.

    Raises whatever PIL raises for unreadable or corrupted data.
    """
    from PIL import Image  # pylint: disable=g-import-not-at-top

    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as img:
        img.load()
        rgb = img.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


# ----------------------------------------------------------------- sources


class DigitsSource:
    """scikit-learn's digits, in memory (index-addressable)."""

    in_memory = True
    channels = 1

    def __init__(self):
        images, labels = _load_digits()
        self._images = {"train": images[:DIGITS_TRAIN_SIZE], "test": images[DIGITS_TRAIN_SIZE:]}
        self._labels = {"train": labels[:DIGITS_TRAIN_SIZE], "test": labels[DIGITS_TRAIN_SIZE:]}

    def split_size(self, base: str) -> int:
        if base not in self._labels:
            raise ValueError(f"digits has base splits 'train' and 'test', not {base!r}")
        return len(self._labels[base])

    def num_classes(self, base: str) -> int:
        del base
        return 10

    def labels(self, base: str) -> np.ndarray:
        return self._labels[base]

    def images(self, base: str) -> np.ndarray:
        """All images of a base split, uint8 [N, 8, 8, 1]."""
        return self._images[base]


@functools.lru_cache(maxsize=1)
def _load_digits():
    """(images uint8 [1797, 8, 8, 1] in 0..255, labels int32), in ``load_digits`` order.

    Reads the CSV that scikit-learn bundles (what ``load_digits`` reads) without
    importing sklearn, which takes seconds; falls back to ``load_digits``.
    """
    spec = importlib.util.find_spec("sklearn")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "digits.csv.gz")
    if os.path.exists(path):
        table = np.loadtxt(path, delimiter=",")
        pixels, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:  # pragma: no cover - layout of a future sklearn
        from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

        digits = load_digits()
        pixels, labels = digits.images, digits.target
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, labels.astype(np.int32)


class FolderSource:
    """An image folder tree PATH/SPLIT/CLASS/FILE (index-addressable, decoded lazily)."""

    in_memory = False
    channels = 3

    def __init__(self, path: str):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"folder dataset: directory {path!r} does not exist")
        self.path = path
        self._splits: dict[str, tuple[list[str], np.ndarray, list[str]]] = {}

    def _split(self, base: str):
        """(files, labels, classes) of a base split, listed on first use."""
        if base not in self._splits:
            split_dir = os.path.join(self.path, base)
            if not os.path.isdir(split_dir):
                raise FileNotFoundError(
                    f"folder dataset: split directory {split_dir!r} not found "
                    f"(existing: {_subdirs(self.path)}; expected {split_dir}/CLASS/*.jpg)")
            train_dir = os.path.join(self.path, "train")
            classes = _subdirs(train_dir if os.path.isdir(train_dir) else split_dir)
            unknown = sorted(set(_subdirs(split_dir)) - set(classes))
            if unknown:
                raise ValueError(f"folder dataset: {split_dir!r} has classes not in train: {unknown[:10]}")
            files, labels = [], []
            for label, name in enumerate(classes):
                class_dir = os.path.join(split_dir, name)
                if os.path.isdir(class_dir):
                    names = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
                    files.extend(os.path.join(class_dir, f) for f in names)
                    labels.extend([label] * len(names))
            if not files:
                raise FileNotFoundError(
                    f"folder dataset: no images ({', '.join(IMAGE_EXTENSIONS)}) in {split_dir}/CLASS/")
            self._splits[base] = (files, np.asarray(labels, np.int32), classes)
        return self._splits[base]

    def split_size(self, base: str) -> int:
        return len(self._split(base)[0])

    def num_classes(self, base: str) -> int:
        return len(self._split(base)[2])

    def labels(self, base: str) -> np.ndarray:
        return self._split(base)[1]

    def file(self, base: str, index: int) -> str:
        return self._split(base)[0][index]

    def load(self, base: str, index: int) -> np.ndarray:
        """Decodes example ``index`` of ``base`` (raises if the file is unreadable)."""
        return decode_image(self.file(base, index))


def _subdirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))


class TfdsSource:
    """A prepared TFDS image classification dataset (streamed with tf.data)."""

    in_memory = False
    channels = 3

    def __init__(self, name: str, data_dir: str | None):
        tf = import_tensorflow()
        del tf
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        self.name = name
        where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(f"tfds dataset {name!r} is not a known TFDS dataset: {str(e)[:200]}") from e
        if not self.builder.is_prepared() or not self.builder.info.splits:
            raise FileNotFoundError(
                f"tfds dataset {name!r} was not found prepared in data_dir={where} "
                f"(looked in {self.builder.data_dir}). It must be downloaded and prepared first, "
                f"e.g. `tfds build {name} --data_dir=DATA_DIR` (for manually downloaded datasets "
                f"such as imagenet2012, put the archives in DATA_DIR/downloads/manual first).")
        features = self.builder.info.features
        if "image" not in features or "label" not in features:
            raise ValueError(f"tfds dataset {name!r} lacks 'image' and 'label' features: {features}")
        self._num_classes = int(features["label"].num_classes)
        self.split_infos = self.builder.info.splits

    def split_size(self, base: str) -> int:
        if base not in self.split_infos:
            raise ValueError(f"tfds dataset {self.name!r} has splits {list(self.split_infos)}, not {base!r}")
        return int(self.split_infos[base].num_examples)

    def num_classes(self, base: str) -> int:
        del base
        return self._num_classes

    def read(self, base: str, lo: int, hi: int):
        """tf.data.Dataset of (encoded image, label, id) for base[lo:hi], canonical order."""
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        ds = self.builder.as_dataset(
            split=f"{base}[{lo}:{hi}]",
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
            # One file at a time: the canonical, file-sequential order that the
            # split slicing indexes, so that enumerate() gives the ids.
            read_config=tfds.ReadConfig(interleave_cycle_length=1),
        )
        ds = ds.take(hi - lo).enumerate(start=lo)
        return ds.map(lambda i, ex: (ex["image"], tf.cast(ex["label"], tf.int32), tf.cast(i, tf.int32)))


@functools.lru_cache(maxsize=1)
def import_tensorflow():
    """Imports TensorFlow once, quietly, and hides any GPU from it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialized: nothing more to do
        pass
    tf.get_logger().setLevel("ERROR")
    return tf


def open_source(dataset: str, data_config):
    """Returns the source object for a ``config.dataset`` spec string."""
    if dataset == "digits":
        return _digits_source()
    if dataset.startswith("tfds:") and dataset[5:]:
        return TfdsSource(dataset[5:], data_config.get("data_dir") if data_config else None)
    if dataset.startswith("folder:") and dataset[7:]:
        return FolderSource(os.path.expanduser(dataset[7:]))
    raise ValueError(f"unknown dataset spec {dataset!r}: expected {SPEC_FORMS}")


@functools.lru_cache(maxsize=1)
def _digits_source() -> DigitsSource:
    return DigitsSource()
