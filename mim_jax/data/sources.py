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
  class, then file name. Images are decoded to RGB (3 channels). Hidden
  directories (``.name``) are neither splits nor classes. With
  ``data.in_memory`` the folder's splits are decoded once, on first use, into
  one uint8 array each (``InMemoryFolderSource``: same-sized images, such as
  Fashion-MNIST or CIFAR as PNGs), and the Python pipeline augments whole
  batches at once instead of image by image.

Split strings follow TFDS (``train``, ``train[:80%]``, ``train[10:200]``,
``train[:-100]``...) for every source and are resolved with TFDS' own code, so
boundaries match TFDS exactly. Every example's id is its index in the base
split: for TFDS, the index in the canonical (unshuffled, file-sequential)
order.

Roles. The name in a split string is either a base split of the dataset or a
*role*, which each source maps to one of its base splits, so that one config
runs on every source:

* ``train``: the base split ``train``.
* ``evaluation``: the first of ``validation``, ``val``, ``test`` that the
  dataset has (digits: ``test``; a folder: whichever of those subdirectories
  exists; ImageNet in TFDS: ``validation``).

Slices apply to the base split the role maps to (``evaluation[:50%]``). A base
split named in the string is used as it is when the dataset has it (a
literal ``test`` or ``val`` still works). ``resolve_split`` is the one place
that maps names; a name that fits nothing raises a ``DatasetError`` listing
the dataset's splits and the roles.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import os
import threading
import time
import types

import numpy as np

from mim_jax.core.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DIGITS_TRAIN_SIZE = 1437
SPEC_FORMS = "'digits', 'tfds:NAME' or 'folder:PATH'"
# Roles -> the base splits they may map to, first existing one wins.
ROLES = {"train": ("train",), "evaluation": ("validation", "val", "test")}
# A TFDS split with more examples than this is not read for its labels (see ``TfdsSource.labels``).
MAX_LABEL_PASS = 200_000


# ------------------------------------------------------------------- splits


def roles_text() -> str:
  """The roles and what they map to, for messages."""
  return ", ".join(f"{role!r} (the split {bases[0]})" if len(bases) == 1 else
                   f"{role!r} (the first of {', '.join(bases)} that exists)"
                   for role, bases in ROLES.items())


def base_split(name: str, source) -> str:
  """The base split that the name in a split string means: itself if the dataset has it,
  else the base split its role maps to (``ROLES``). Raises ``DatasetError`` otherwise."""
  bases = list(source.base_splits())
  if name in bases:
    return name
  for candidate in ROLES.get(name, ()):
    if candidate in bases:
      return candidate
  what = (f"the role {name!r} maps to none of its splits" if name in ROLES
          else f"there is no split {name!r}")
  raise DatasetError(
      f"dataset {source.spec!r}: {what}. It has the splits {bases}; roles: {roles_text()}. "
      f"Add such a split, or set the config's splits (train_split, probe.train_split / "
      f"test_split, knn.train_split / test_split, eval.split) to splits or roles it has, e.g. "
      f"--config.probe.test_split=SPLIT"
      + (f"; {source.split_hint}" if getattr(source, "split_hint", "") else "") + ".")


def resolve_split(split: str, source) -> tuple[str, int, int]:
  """Turns a TFDS-style split string into (base split, start, stop) on the base split.

  The name in the string is a base split or a role (``base_split``).
  ``source.split_size(base)`` gives the base split's size; a source with
  ``split_infos`` (TFDS' SplitDict) passes it on, which also enables TFDS'
  shard-unit slicing. Raises ``DatasetError`` for a string that does not
  parse, names no split, or slices outside it. Without TFDS installed, a plain split name (no
  slice) still resolves.
  """
  if not isinstance(split, str):
    raise DatasetError(f"dataset {source.spec!r}: a split must be a string, got {split!r}")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    if any(c in split for c in "[]+"):
      raise DatasetError(f"dataset {source.spec!r}: split {split!r}: slices and '+' are read "
                         f"by tensorflow_datasets, which is not installed") from None
    base = base_split(split, source)
    return base, 0, source.split_size(base)
  try:
    instruction = tfds.core.ReadInstruction.from_spec(split)
  except (ValueError, NotImplementedError, AssertionError) as e:
    del e  # TFDS' message is long and says the same
    raise DatasetError(
        f"dataset {source.spec!r}: split {split!r} does not parse; write a split or role, "
        f"optionally sliced as in TFDS: 'train', 'evaluation', 'train[:80%]', 'train[10:200]'"
    ) from None
  if not isinstance(instruction, tfds.core.ReadInstruction):
    raise DatasetError(f"dataset {source.spec!r}: split {split!r} must select one base split "
                       f"(no '+' or 'all'), e.g. 'train' or 'train[:80%]'")
  name = instruction.split_name
  base = base_split(name, source)
  n = source.split_size(base)
  infos = getattr(source, "split_infos", None)
  info = infos[base] if infos else types.SimpleNamespace(num_examples=n, shard_lengths=[n])
  try:
    (absolute,) = instruction.to_absolute({name: info})
  except ValueError as e:
    raise DatasetError(
        f"dataset {source.spec!r}: split {split!r} does not fit the {n} examples of its base "
        f"split {base!r}: {e}") from None
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
  spec = "digits"

  def __init__(self):
    images, labels = _load_digits()
    self._images = {"train": images[:DIGITS_TRAIN_SIZE], "test": images[DIGITS_TRAIN_SIZE:]}
    self._labels = {"train": labels[:DIGITS_TRAIN_SIZE], "test": labels[DIGITS_TRAIN_SIZE:]}

  def base_splits(self) -> list[str]:
    return list(self._labels)

  def split_size(self, base: str) -> int:
    return len(self._labels[base_split(base, self)])

  def num_classes(self, base: str) -> int:
    del base
    return 10

  def labels(self, base: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Labels of ``base[start:stop]`` by id."""
    return self._labels[base][start:stop]

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
  split_hint = "a folder dataset's splits are its subdirectories PATH/SPLIT/CLASS/*.jpg"

  def __init__(self, path: str):
    self.spec = f"folder:{path}"
    if not os.path.isdir(path):
      what = "is a file, not a directory" if os.path.exists(path) else "does not exist"
      raise DatasetError(
          f"folder dataset: {path!r} {what}; --config.dataset=folder:PATH needs a directory "
          f"PATH/SPLIT/CLASS/*.jpg (e.g. PATH/train/cat/1.jpg and PATH/val/cat/2.jpg)")
    self.path = path
    self._splits: dict[str, tuple[list[str], np.ndarray, list[str]]] = {}

  def base_splits(self) -> list[str]:
    return _subdirs(self.path)

  def _split(self, base: str):
    """(files, labels, classes) of a base split, listed on first use."""
    if base not in self._splits:
      split_dir = os.path.join(self.path, base_split(base, self))
      train_dir = os.path.join(self.path, "train")
      classes = _subdirs(train_dir if os.path.isdir(train_dir) else split_dir)
      unknown = sorted(set(_subdirs(split_dir)) - set(classes))
      if unknown:
        raise DatasetError(
            f"folder dataset: {split_dir!r} has classes that {train_dir!r} lacks: "
            f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}; every class of a split "
            f"must be a subdirectory of train/ too (labels are train's sorted classes)")
      files, labels = [], []
      for label, name in enumerate(classes):
        class_dir = os.path.join(split_dir, name)
        if os.path.isdir(class_dir):
          names = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
          files.extend(os.path.join(class_dir, f) for f in names)
          labels.extend([label] * len(names))
      if not files:
        present = _subdirs(split_dir)
        found = (f"class directories {present[:10]} but no image files in them" if present
                 else "no class directories")
        raise DatasetError(
            f"folder dataset: {split_dir!r} has {found}; put the images in "
            f"{split_dir}/CLASS/ as {', '.join(IMAGE_EXTENSIONS)}")
      self._splits[base] = (files, np.asarray(labels, np.int32), classes)
    return self._splits[base]

  def split_size(self, base: str) -> int:
    return len(self._split(base)[0])

  def num_classes(self, base: str) -> int:
    return len(self._split(base)[2])

  def labels(self, base: str, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Labels of ``base[start:stop]`` by id."""
    return self._split(base)[1][start:stop]

  def file(self, base: str, index: int) -> str:
    return self._split(base)[0][index]

  def load(self, base: str, index: int) -> np.ndarray:
    """Decodes example ``index`` of ``base`` (raises if the file is unreadable)."""
    return decode_image(self.file(base, index))


class InMemoryFolderSource(FolderSource):
  """A folder whose splits are decoded once into memory (``data.in_memory``).

  The same examples, ids and labels as ``FolderSource``; ``images(base)`` is uint8
  [N, H, W, 3], decoded on first use and kept for the process (every iterator and evaluator of
  a run shares it; every host decodes the whole split). Decoding is sequential: small images decode faster in one thread than in
  several fighting for the interpreter (Fashion-MNIST's PNGs, measured on the 2-core VM: 16,400
  images/s in one thread, 6,300 in two). Every image of a split must decode and have the
  same size: otherwise a ``DatasetError`` names the files (unlike the lazy folder, which skips
  unreadable images; leave ``data.in_memory`` off to train past them).
  """

  in_memory = True

  def images(self, base: str) -> np.ndarray:
    files = tuple(self._split(base)[0])
    key = (os.path.realpath(self.path), base, files)
    with _DECODED_LOCK:
      cached = _DECODED.get(key)
      if cached is None:
        cached = _decode_split(files, f"{self.spec} split {base!r}")
        while len(_DECODED) >= _DECODED_SPLITS:
          _DECODED.pop(next(iter(_DECODED)))  # the oldest
        _DECODED[key] = cached
      return cached


_DECODED: dict = {}
_DECODED_LOCK = threading.Lock()
_DECODED_SPLITS = 4  # splits kept decoded (a run uses two: train and evaluation)
_MEMORY_SHARE = 0.5  # a decoded split may take at most this share of the machine's memory


def _decode_split(files, what: str) -> np.ndarray:
  """uint8 [N, H, W, 3] of every file, or a DatasetError naming the bad ones."""
  start = time.perf_counter()
  try:
    first = decode_image(files[0])
  except Exception as e:  # pylint: disable=broad-except
    raise DatasetError(f"{what}: data.in_memory takes the size of the images from the first, "
                       f"{files[0]}, which cannot be read ({e})") from e
  need = first.nbytes * len(files)
  try:
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
    have = None
  if have and need > _MEMORY_SHARE * have:
    raise DatasetError(
        f"{what}: {len(files)} images of {first.shape} need {need / 2**30:.1f} GiB decoded, over "
        f"half of this machine's {have / 2**30:.1f} GiB; set data.in_memory=False")
  out = np.empty((len(files),) + first.shape, np.uint8)
  bad = []
  for j, path in enumerate(files):
    try:
      image = decode_image(path)
    except Exception as e:  # pylint: disable=broad-except
      bad.append(f"{path} ({e})")
      continue
    if image.shape != first.shape:
      bad.append(f"{path} (size {image.shape[:2]}, not {first.shape[:2]})")
      continue
    out[j] = image
  if bad:
    raise DatasetError(
        f"{what}: data.in_memory needs every image readable and of one size; {len(bad)} are "
        f"not: {bad[:5]}{' ...' if len(bad) > 5 else ''} (fix or remove them, or set "
        f"data.in_memory=False: the lazy folder skips unreadable images)")
  logger.info("Decoded %s into memory: %d images of %s (%.0f MB) in %.1f s", what, len(files),
              first.shape, need / 2**20, time.perf_counter() - start)
  return out


def _subdirs(path: str) -> list[str]:
  """Sorted subdirectories of ``path``, hidden ones (``.name``) left out."""
  return sorted(d for d in os.listdir(path)
                if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))


class TfdsSource:
  """A prepared TFDS image classification dataset (streamed with tf.data)."""

  in_memory = False
  channels = 3

  def __init__(self, name: str, data_dir: str | None):
    tf = import_tensorflow()
    del tf
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    self.name, self.data_dir = name, data_dir or None
    self.spec = f"tfds:{name}"
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
      # TFDS' own message lists every dataset it knows: not repeated here.
      raise DatasetError(
          f"tfds:{name}: {name!r} is not a known TFDS dataset{_close_tfds_names(name)}. "
          f"Check the name (https://www.tensorflow.org/datasets/catalog), or use "
          f"--config.dataset=folder:PATH for images in PATH/SPLIT/CLASS/") from None
    if not self.builder.is_prepared() or not self.builder.info.splits:
      raise DatasetError(
          f"tfds dataset {name!r} was not found prepared in data_dir={where} "
          f"(looked in {self.builder.data_dir}). It must be downloaded and prepared first, "
          f"e.g. `tfds build {name} --data_dir=DATA_DIR` (for manually downloaded datasets "
          f"such as imagenet2012, put the archives in DATA_DIR/downloads/manual first), "
          f"then pass --config.data.data_dir=DATA_DIR.")
    features = self.builder.info.features
    if "image" not in features or "label" not in features:
      raise DatasetError(
          f"tfds dataset {name!r} lacks 'image' and 'label' features (it has "
          f"{sorted(features.keys())}); only image classification datasets can be read")
    self._num_classes = int(features["label"].num_classes)
    self.split_infos = self.builder.info.splits

  def base_splits(self) -> list[str]:
    return list(self.split_infos)

  def split_size(self, base: str) -> int:
    return int(self.split_infos[base_split(base, self)].num_examples)

  def num_classes(self, base: str) -> int:
    del base
    return self._num_classes

  def labels(self, base: str, start: int = 0, stop: int | None = None) -> np.ndarray | None:
    """Labels of ``base[start:stop]`` by id, or None when that is too costly to read.

    They are read once per process (image bytes skipped, not decoded) and cached per
    (dataset, data_dir, base split) when the base split has at most ``MAX_LABEL_PASS``
    examples, else per range when the range has at most that many. Above that, None:
    the only way to a label is reading the whole record, and a pass over, e.g.,
    ImageNet's training split reads ~140 GB.
    """
    n = self.split_size(base)
    stop = n if stop is None else stop
    if n <= MAX_LABEL_PASS:
      return _tfds_labels(self, base, 0, n)[start:stop]
    if stop - start <= MAX_LABEL_PASS:
      return _tfds_labels(self, base, start, stop)
    key = (self.name, self.data_dir, base, start, stop)
    with _label_lock:
      first = key not in _uniform_noted
      _uniform_noted.add(key)
    if first:
      logger.info("tfds:%s: %s[%d:%d] has %d > %d examples: its labels are not read (that "
                  "reads every image), so subsets of it are uniform draws, not stratified "
                  "by class", self.name, base, start, stop, stop - start, MAX_LABEL_PASS)
    return None

  def read(self, base: str, lo: int, hi: int, ids: np.ndarray | None = None):
    """tf.data.Dataset of (encoded image, label, id) for base[lo:hi], canonical order.

    With ``ids`` (sorted, within [lo, hi)), only those examples: the range is read and the
    others are dropped before anything is decoded.
    """
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
    if ids is not None and len(ids) < hi - lo:
      keep = np.zeros(hi - lo, bool)
      keep[np.asarray(ids) - lo] = True
      keep = tf.constant(keep)
      ds = ds.filter(lambda i, ex: tf.gather(keep, i - lo))
    return ds.map(lambda i, ex: (ex["image"], tf.cast(ex["label"], tf.int32), tf.cast(i, tf.int32)))


_label_cache: dict[tuple, np.ndarray] = {}
_uniform_noted: set[tuple] = set()
_label_lock = threading.Lock()


def _tfds_labels(source: TfdsSource, base: str, start: int, stop: int) -> np.ndarray:
  """Labels int32 [stop - start] of a TFDS split's range, by id (cached; see ``labels``)."""
  name = source.name
  key = (name, source.data_dir, base, source.split_size(base), start, stop)
  with _label_lock:
    if key not in _label_cache:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

      logger.info("tfds:%s: reading the labels of %s[%d:%d] once (images skipped), to draw "
                  "class-stratified subsets of it", name, base, start, stop)
      ds = source.builder.as_dataset(
          split=f"{base}[{start}:{stop}]", shuffle_files=False,
          decoders={"image": tfds.decode.SkipDecoding()},
          read_config=tfds.ReadConfig(interleave_cycle_length=1))
      ds = ds.take(stop - start).map(lambda ex: ex["label"]).batch(8192)
      parts = [np.asarray(b, np.int64) for b in ds.as_numpy_iterator()]
      labels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
      if len(labels) != stop - start:
        raise DatasetError(f"tfds:{name}: {base}[{start}:{stop}] yielded {len(labels)} "
                           f"labels, its metadata says {stop - start} examples; prepare "
                           f"the dataset again")
      _label_cache[key] = labels.astype(np.int32)
    return _label_cache[key]


def clear_label_cache() -> None:
  """Forgets the TFDS labels read so far (tests that change a dataset under the same name)."""
  with _label_lock:
    _label_cache.clear()
    _uniform_noted.clear()


def _close_tfds_names(name: str) -> str:
  """' (did you mean ...?)' with up to 3 registered TFDS names close to ``name``, or ''."""
  try:
    import difflib  # pylint: disable=g-import-not-at-top

    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    close = difflib.get_close_matches(name.split("/")[0].split(":")[0], tfds.list_builders(),
                                      n=3, cutoff=0.75)
  except Exception:  # pylint: disable=broad-except
    return ""
  return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


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
  """Returns the source object for a ``config.dataset`` spec string.

  Raises ``DatasetError`` for a spec of no known form, or a dataset that cannot be opened.
  """
  in_memory = bool(data_config.get("in_memory", False)) if data_config else False
  if in_memory and not dataset.startswith("folder:"):
    raise DatasetError(f"data.in_memory applies to folder datasets, not {dataset!r} (digits is "
                       f"in memory already)")
  if dataset == "digits":
    return _digits_source()
  if dataset.startswith("tfds:") and dataset[5:]:
    return TfdsSource(dataset[5:], data_config.get("data_dir") if data_config else None)
  if dataset.startswith("folder:") and dataset[7:]:
    if in_memory:
      return InMemoryFolderSource(os.path.expanduser(dataset[7:]))
    return FolderSource(os.path.expanduser(dataset[7:]))
  raise DatasetError(f"unknown dataset spec {dataset!r}: --config.dataset must be {SPEC_FORMS} "
                     f"(e.g. folder:/data/my_images with train/CLASS/*.jpg and val/CLASS/*.jpg)")


@functools.lru_cache(maxsize=1)
def _digits_source() -> DigitsSource:
  return DigitsSource()
