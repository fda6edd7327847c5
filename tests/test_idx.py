"""IDX files -> folder dataset (issue #22, Fashion-MNIST / MNIST offline): the reader, the
converter and its command line. IDX files are written here by a writer of the test's own."""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mim_jax import data
from mim_jax.core.errors import DatasetError
from mim_jax.data import idx, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
              np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array):
  """IDX encoding of ``array``: 0x0000, type code, rank, big-endian int32 dims, big-endian data."""
  array = np.asarray(array)
  header = struct.pack(">HBB", 0, TYPE_CODES[array.dtype.type], array.ndim)
  header += struct.pack(f">{array.ndim}i", *array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, zipped):
  payload = idx_bytes(array)
  with open(path, "wb") as f:
    f.write(gzip.compress(payload) if zipped else payload)
  return str(path)


def make_split(rng, n, num_classes=10, size=(7, 5)):
  images = rng.integers(0, 256, (n, *size), dtype=np.uint8)
  images[0] = 0  # an all-black and an all-white image survive too
  images[1] = 255
  return images, rng.integers(0, num_classes, n).astype(np.uint8)


def write_idx_dir(path, splits, zipped=True):
  """The four standard files (train / t10k) of ``splits`` = {"train": (x, y), "test": (x, y)}."""
  os.makedirs(path, exist_ok=True)
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images, labels = splits[split]
    gz = ".gz" if zipped else ""
    write_idx(os.path.join(path, f"{prefix}-images-idx3-ubyte{gz}"), images, zipped)
    write_idx(os.path.join(path, f"{prefix}-labels-idx1-ubyte{gz}"), labels, zipped)
  return str(path)


@pytest.mark.parametrize("zipped", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trips_every_type(tmp_path, dtype, zipped):
  rng = np.random.default_rng(0)
  array = (rng.normal(size=(3, 4, 2)) * 100).astype(dtype)
  path = write_idx(tmp_path / "a-idx3-ubyte", array, zipped)
  back = idx.read_idx(path)
  assert back.dtype == np.dtype(dtype) and back.dtype.isnative
  np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("zipped", [True, False])
def test_convert_round_trips_images_labels_and_order(tmp_path, zipped):
  rng = np.random.default_rng(1)
  splits = {"train": make_split(rng, 57), "test": make_split(rng, 23)}
  splits["test"][1][:] = np.where(splits["test"][1] == 9, 0, splits["test"][1])  # no class 9
  src = write_idx_dir(tmp_path / "src", splits, zipped)
  out = tmp_path / "out"
  lines = []
  assert idx.convert(src, str(out), "fashion_mnist", log=lines.append) == {"train": 57, "test": 23}
  assert [line.split(":")[0] for line in lines] == ["train", "test"]
  assert "57 images 7x5, 10 classes" in lines[0]
  assert sorted(os.listdir(out)) == ["test", "train"]
  assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # no temporary directory left
  expected_classes = ["0_T-shirt_top", "1_Trouser", "2_Pullover", "3_Dress", "4_Coat",
                      "5_Sandal", "6_Shirt", "7_Sneaker", "8_Bag", "9_Ankle_boot"]
  assert sorted(os.listdir(out / "test")) == expected_classes  # class 9 too, empty

  source = sources.FolderSource(str(out))
  for split, (images, labels) in splits.items():
    assert source.num_classes(split) == 10
    # The folder's order is class, then file name = IDX index: a stable sort by label.
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(source.labels(split), labels[order])
    for position, index in enumerate(order):
      path = source.file(split, position)
      assert os.path.basename(path) == f"{index:05d}.png"
      assert os.path.basename(os.path.dirname(path)) == expected_classes[labels[index]]
      with Image.open(path) as img:
        assert img.mode == "L" and img.format == "PNG"
        np.testing.assert_array_equal(np.asarray(img), images[index])
    rgb = source.load(split, 0)  # what the pipeline decodes: grey in all three channels
    np.testing.assert_array_equal(rgb, np.repeat(images[order[0]][..., None], 3, axis=-1))

  for split, n in (("train", 57), ("evaluation", 23)):  # evaluation -> test/
    info = data.dataset_info(None, f"folder:{out}", split)
    assert (info.num_examples, info.num_classes) == (n, 10)


def test_mnist_and_unnamed_classes(tmp_path):
  rng = np.random.default_rng(2)
  splits = {"train": make_split(rng, 30, num_classes=3), "test": make_split(rng, 5, num_classes=3)}
  src = write_idx_dir(tmp_path / "src", splits, zipped=False)
  idx.convert(src, str(tmp_path / "mnist"), "mnist", log=lambda _: None)
  assert sorted(os.listdir(tmp_path / "mnist" / "train")) == [str(d) for d in range(10)]
  idx.convert(src, str(tmp_path / "none"), "none", log=lambda _: None)
  assert sorted(os.listdir(tmp_path / "none" / "train")) == ["0", "1", "2"]
  assert idx.class_dirs(None, 12)[:2] == ["00", "01"]  # sorted order stays the label order
  assert idx.class_dirs(["a", "b"], 2) == ["0_a", "1_b"]


def test_truncated_files_are_named(tmp_path):
  payload = idx_bytes(np.zeros((4, 3, 3), np.uint8))
  cases = {"short-data": payload[:-1], "short-header": payload[:10], "tiny": payload[:3],
           "extra": payload + b"\0"}
  for name, content in cases.items():
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=name) as info:
      idx.read_idx(str(path))
    assert ("has bytes after its data" if name == "extra" else "truncated") in str(info.value)
  cut = tmp_path / "cut.gz"  # a gzip stream that ends early
  cut.write_bytes(gzip.compress(payload)[:-12])
  with pytest.raises(DatasetError, match="cut.gz.*cannot be read"):
    idx.read_idx(str(cut))


@pytest.mark.parametrize("magic", [b"\x00\x01\x08\x03", b"\x00\x00\x07\x03", b"\x00\x00\x08\x00",
                                   b"PK\x03\x04"])
def test_wrong_magic_number_is_named(tmp_path, magic):
  path = tmp_path / "bad-images-idx3-ubyte"
  path.write_bytes(magic + idx_bytes(np.zeros((2, 2, 2), np.uint8))[4:])
  with pytest.raises(DatasetError, match=r"bad-images-idx3-ubyte.*not an IDX file: magic number "
                                         + f"0x{magic.hex().upper()}"):
    idx.read_idx(str(path))


def test_mismatched_or_missing_files(tmp_path):
  rng = np.random.default_rng(3)
  splits = {"train": make_split(rng, 6), "test": make_split(rng, 4)}
  src = write_idx_dir(tmp_path / "src", splits)
  write_idx(os.path.join(src, "t10k-labels-idx1-ubyte.gz"), np.zeros(5, np.uint8), True)
  with pytest.raises(DatasetError, match="4 images, 5 labels"):
    idx.convert(src, str(tmp_path / "out"), log=lambda _: None)
  os.remove(os.path.join(src, "t10k-labels-idx1-ubyte.gz"))
  with pytest.raises(DatasetError, match=r"lacks the IDX file\(s\) t10k-labels-idx1-ubyte"):
    idx.convert(src, str(tmp_path / "out"), log=lambda _: None)
  assert not os.path.exists(tmp_path / "out") and os.listdir(tmp_path) == ["src"]


def test_failed_conversion_leaves_nothing(tmp_path, monkeypatch):
  rng = np.random.default_rng(4)
  src = write_idx_dir(tmp_path / "src", {"train": make_split(rng, 8), "test": make_split(rng, 3)})
  real = idx.write_split

  def fail_on_test(images, labels, split_dir, classes):
    real(images, labels, split_dir, classes)
    if split_dir.endswith("test"):
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(idx, "write_split", fail_on_test)
  assert idx.main(["--src", src, "--out", str(tmp_path / "out")]) == 4
  assert sorted(os.listdir(tmp_path)) == ["src"]  # neither out nor out.tmp-*


def test_cli_converts_and_refuses_a_non_empty_out(tmp_path, capsys):
  rng = np.random.default_rng(5)
  src = write_idx_dir(tmp_path / "src", {"train": make_split(rng, 9), "test": make_split(rng, 4)})
  out = tmp_path / "out"
  out.mkdir()  # an empty directory is fine
  argv = ["--src", src, "--out", str(out)]
  assert idx.main(argv) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("train: 9 images 7x5") and lines[1].startswith("test: 4 images 7x5")
  assert lines[2].startswith(f"wrote {out} (train 9, test 4)")
  assert len(os.listdir(out / "train" / "0")) == int(np.sum(idx.read_idx(
      os.path.join(src, "train-labels-idx1-ubyte.gz")) == 0))

  # The refusal, as a process: exit status 2, one message, no traceback.
  cmd = [sys.executable, "-m", "mim_jax.data.idx", *argv]
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
  assert done.returncode == 2
  assert "not empty" in done.stderr and str(out) in done.stderr
  assert "Traceback" not in done.stderr
  (tmp_path / "file").write_text("x")
  assert idx.main(["--src", src, "--out", str(tmp_path / "file")]) == 2
