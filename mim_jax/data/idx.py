"""IDX files (MNIST, Fashion-MNIST) -> an image folder that ``folder:PATH`` reads.

Fashion-MNIST (60,000 training and 10,000 test images, 28x28 grey, 10 classes) and MNIST are
published as four IDX files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, gzipped (``.gz``) or not.

Two routes to Fashion-MNIST:

* online: prepare it once with TFDS (``tfds build fashion_mnist --data_dir=DIR`` downloads
  about 30 MB), then ``--config.dataset=tfds:fashion_mnist --config.data.data_dir=DIR``.
* offline: Debian's ``dataset-fashion-mnist`` package holds the four files. Unpack it without
  installing it and convert them::

    apt-get update && apt-get download dataset-fashion-mnist
    dpkg -x dataset-fashion-mnist_*.deb /tmp/fmnist
    python -m mim_jax.data.idx --src /tmp/fmnist/usr/share/datasets/fashion-mnist \\
        --out data/fashion_mnist --names fashion_mnist

  then ``--config.dataset=folder:data/fashion_mnist`` (its ``test/`` is the ``evaluation``
  role). MNIST's files convert the same way with ``--names mnist``.

The folder is ``OUT/train/CLASS/NNNNN.png`` and ``OUT/test/CLASS/NNNNN.png``: lossless grey
PNGs, NNNNN the image's index in its IDX file (zero-padded), CLASS the class's name prefixed by
its label (``0_T-shirt_top`` ... ``9_Ankle_boot``; MNIST ``0`` ... ``9``), so that the sorted
class directories give the IDX labels and the folder's order (class, then file name) and ids
are the same on every conversion. Every class has a directory in both splits.

The conversion writes into ``OUT.tmp-*`` next to OUT and renames it to OUT when both splits are
complete, so OUT either does not exist or is whole. Ctrl-C and SIGTERM delete ``OUT.tmp-*``;
a conversion killed outright (``kill -9``) leaves only that directory, which can be deleted. A
non-empty OUT is refused (exit status 2), as are missing, truncated or malformed files, each
named in the message; a failed write exits with status 4.

``read_idx`` reads any IDX file to a numpy array: the magic number ``0x0000TTNN`` gives the
element type TT (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)
and the rank NN; NN big-endian int32 dimensions follow, then the big-endian data.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import zlib

import numpy as np

from mim_jax.core import errors
from mim_jax.core.errors import DatasetError

DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
          0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

CLASS_NAMES = {
    "fashion_mnist": ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle_boot"],
    "mnist": None,  # the digits themselves: 0 ... 9
    "none": None,   # the labels: 0 ... max label
}

# Split in the folder -> prefix of its IDX files.
SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: str) -> np.ndarray:
  """The array an IDX file holds (gzipped or not, told by its content), in native byte order.

  Raises ``DatasetError`` naming the file when it cannot be read, is truncated, has bytes
  after its data or a magic number that is not IDX's.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
    if data[:2] == b"\x1f\x8b":
      data = gzip.decompress(data)
  except (EOFError, OSError, zlib.error) as e:
    raise DatasetError(f"IDX file {path!r} cannot be read: {e} (truncated or corrupted? "
                       f"download it again)") from None
  if len(data) < 4:
    raise DatasetError(f"IDX file {path!r} is truncated: {len(data)} bytes, shorter than the "
                       f"4-byte magic number")
  magic = int.from_bytes(data[:4], "big")
  code, rank = data[2], data[3]
  if data[:2] != b"\0\0" or code not in DTYPES or rank == 0:
    raise DatasetError(
        f"{path!r} is not an IDX file: magic number 0x{magic:08X}; IDX files start with "
        f"0x0000TTNN, TT the type ({', '.join(f'0x{c:02X}' for c in DTYPES)}), NN >= 1 the "
        f"number of dimensions")
  header = 4 + 4 * rank
  if len(data) < header:
    raise DatasetError(f"IDX file {path!r} is truncated: {len(data)} bytes, shorter than its "
                       f"header of {header} bytes ({rank} dimensions)")
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
  dtype = DTYPES[code]
  expected = header + math.prod(shape) * dtype.itemsize
  if len(data) != expected:
    what = "is truncated" if len(data) < expected else "has bytes after its data"
    raise DatasetError(
        f"IDX file {path!r} {what}: its header says {dtype.name} {shape}, {expected} bytes "
        f"in all, the file{' (unzipped)' if path.endswith('.gz') else ''} has {len(data)}")
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("="), copy=False)


def find_files(src: str) -> dict[str, tuple[str, str]]:
  """{split: (images file, labels file)} of the four standard IDX files in ``src``.

  Accepts ``train-images-idx3-ubyte`` and ``train-images.idx3-ubyte``, each with or without
  ``.gz``. Raises ``DatasetError`` listing what is missing.
  """
  if not os.path.isdir(src):
    raise DatasetError(f"--src {src!r} is not a directory; it must hold the four IDX files "
                       f"train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                       f"t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")
  found, missing = {}, []
  for split, prefix in SPLITS.items():
    pair = []
    for kind, rank in (("images", 3), ("labels", 1)):
      names = [f"{prefix}-{kind}{sep}idx{rank}-ubyte{gz}"
               for sep in "-." for gz in ("", ".gz")]
      paths = [os.path.join(src, n) for n in names if os.path.isfile(os.path.join(src, n))]
      if paths:
        pair.append(paths[0])
      else:
        missing.append(names[0] + "[.gz]")
    found[split] = tuple(pair)
  if missing:
    raise DatasetError(f"{src!r} lacks the IDX file(s) {', '.join(missing)}")
  return found


def class_dirs(names: list[str] | None, num_classes: int) -> list[str]:
  """Class directory names whose sorted order is the label order: ``LABEL_NAME`` with the
  label zero-padded, or the label alone when there are no names."""
  width = len(str(max(num_classes - 1, 0)))
  if names is None:
    return [f"{label:0{width}d}" for label in range(num_classes)]
  return [f"{label:0{width}d}_{name}" for label, name in enumerate(names)]


def load_split(images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W], labels int64 [N]) of one split, checked against each other."""
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.dtype != np.uint8:
    raise DatasetError(f"IDX file {images_path!r} holds {images.dtype} {images.shape}; "
                       f"images must be uint8 [N, height, width]")
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    raise DatasetError(f"IDX file {labels_path!r} holds {labels.dtype} {labels.shape}; "
                       f"labels must be integers [N]")
  if len(labels) != len(images):
    raise DatasetError(f"IDX files {images_path!r} and {labels_path!r} do not match: "
                       f"{len(images)} images, {len(labels)} labels")
  if len(labels) and labels.min() < 0:
    raise DatasetError(f"IDX file {labels_path!r} has a negative label {labels.min()}")
  return images, labels.astype(np.int64)


def write_split(images: np.ndarray, labels: np.ndarray, split_dir: str, classes: list[str]) -> None:
  """Writes ``split_dir/CLASS/NNNNN.png`` for every image, a directory for every class."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  for name in classes:
    os.makedirs(os.path.join(split_dir, name))
  width = max(5, len(str(len(images) - 1)))
  for index, (image, label) in enumerate(zip(images, labels)):
    path = os.path.join(split_dir, classes[label], f"{index:0{width}d}.png")
    Image.fromarray(image).save(path, format="PNG")


def convert(src: str, out: str, names: str = "none", log=print) -> dict[str, int]:
  """Converts the IDX files in ``src`` into the folder dataset ``out`` (see the module's doc).

  Returns {split: number of images}. Raises ``DatasetError`` for a non-empty ``out``, missing
  or malformed files, or labels without a name; ``OSError`` when a write fails (nothing is
  left at ``out`` then).
  """
  if names not in CLASS_NAMES:
    raise DatasetError(f"--names {names!r}: must be one of {', '.join(CLASS_NAMES)}")
  out = os.path.abspath(out)
  if os.path.exists(out) and not (os.path.isdir(out) and not os.listdir(out)):
    what = "a directory that is not empty" if os.path.isdir(out) else "a file"
    raise DatasetError(f"--out {out!r} is {what}; give a new (or empty) directory, or delete "
                       f"it to convert again")
  files = find_files(src)
  splits = {split: load_split(*paths) for split, paths in files.items()}
  num_classes = 1 + max(int(labels.max(initial=-1)) for _, labels in splits.values())
  given = CLASS_NAMES[names]
  if names == "mnist":
    num_classes = max(num_classes, 10)
  elif given is not None:
    if num_classes > len(given):
      raise DatasetError(f"the labels of {src!r} go up to {num_classes - 1}, but "
                         f"--names {names} names {len(given)} classes; use --names none")
    num_classes = len(given)
  classes = class_dirs(given, num_classes)

  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=parent)
  try:
    for split, (images, labels) in splits.items():
      start = time.time()
      write_split(images, labels, os.path.join(tmp, split), classes)
      log(f"{split}: {len(images)} images {images.shape[1]}x{images.shape[2]}, "
          f"{num_classes} classes, from {os.path.basename(files[split][0])} "
          f"({time.time() - start:.1f} s)")
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
    os.rename(tmp, out)  # replaces an empty directory; fails if another process filled it
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {split: len(labels) for split, (_, labels) in splits.items()}


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m mim_jax.data.idx",
      description="Converts MNIST-style IDX files (train-images-idx3-ubyte[.gz], "
                  "train-labels-idx1-ubyte[.gz], t10k-...) into the folder dataset "
                  "OUT/{train,test}/CLASS/NNNNN.png that --config.dataset=folder:OUT reads.")
  parser.add_argument("--src", required=True, help="directory holding the four IDX files")
  parser.add_argument("--out", required=True, help="new (or empty) directory to write")
  parser.add_argument("--names", default="none", choices=list(CLASS_NAMES),
                      help="class directory names: Fashion-MNIST's (0_T-shirt_top ... "
                           "9_Ankle_boot), MNIST's (0 ... 9), or the labels (default)")
  args = parser.parse_args(argv)
  start = time.time()
  try:
    counts = convert(args.src, args.out, args.names)
  except errors.UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return errors.EXIT_USER_ERROR
  except OSError as e:
    print(f"error: writing {args.out!r} failed: {e}; nothing was left there",
          file=sys.stderr)
    return errors.EXIT_WRITE
  print(f"wrote {args.out} ({', '.join(f'{s} {n}' for s, n in counts.items())}) in "
        f"{time.time() - start:.1f} s; use --config.dataset=folder:{args.out}")
  return errors.EXIT_OK


if __name__ == "__main__":
  # SIGTERM unwinds like Ctrl-C, so that ``convert`` deletes its temporary directory.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  sys.exit(main())
