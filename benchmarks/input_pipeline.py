"""Images/s of mim_jax's training iterator against a plain tf.data reference, per core count.

  python -m benchmarks.input_pipeline [--folder PATH | --generate N] [--tfds NAME --data_dir D]
      [--cores 1,2] [--pipelines python,tf,tf_no_antialias] [--batch_size 64] [--image_size 224]
      [--batches 20] [--rounds 2] [--mode train|eval] [--no_reference]

Workloads: a folder of JPEGs (``--folder``, or ``--generate N`` ImageNet-like ones: 330-500 px,
smooth colour fields plus noise, quality 90, written once under /tmp) and, with ``--tfds``, a
prepared TFDS dataset (``--tfds generate``: those JPEGs written as one, ``mim_bench_jpegs``). For each core count k, each measurement runs in its own process pinned
to k cores (``os.sched_setaffinity``):

* ``reference``: the plain tf.data map the input-pipeline issue measured: read the file (TFDS:
  the encoded image of the record),
  ``sample_distorted_bounding_box`` (area 0.2-1, ratio 3/4-4/3), ``decode_and_crop_jpeg``,
  bicubic resize, random flip, batch; ``num_parallel_calls`` = k, a private pool of k threads;
* ``python`` / ``tf`` / ``tf_no_antialias``: ``data.train_iterator`` with ``data.pipeline``
  set so (the last with ``data.antialias = False``, the reference's resize) and
  ``data.num_workers`` = k (RandomResizedCrop 0.2-1 + flip, normalized float32 batches);
  ``python_in_memory`` / ``tf_in_memory``: with ``data.in_memory`` (a folder of same-sized
  images decoded once, before the timing: e.g. ``--folder`` of Fashion-MNIST's PNGs from
  ``python -m mim_jax.data.idx``, with ``--no_reference``, since the reference reads JPEGs).

``--mode eval`` times the evaluation iterator instead (one ordered pass: decode, bicubic resize
of the shorter side to image_size / 0.875, center crop), against a tf.data map doing the same
(``decode_jpeg``, resize, crop; ordered, no shuffle).

Rounds alternate the pipelines; each reports the median of its rounds' images/s (after one
untimed batch). Lines: one JSON object per (workload, pipeline, cores), then per workload a
summary with ``over_reference`` (images/s over the reference's at the same cores) and
``scaling`` (images/s at k cores over k times images/s at 1 core). Nothing else may run beside
it (see README.md).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATED = "/tmp/mim_jax_bench_jpegs"
GENERATED_TFDS = "/tmp/mim_jax_bench_tfds"


def generate_folder(n: int, root: str = GENERATED) -> str:
  """``n`` ImageNet-like JPEGs in ``root/train/c{0..9}/`` (kept between runs)."""
  from PIL import Image
  done = os.path.join(root, f".done_{n}")
  if os.path.exists(done):
    return root
  rng = np.random.default_rng(0)
  for i in range(n):
    h, w = (int(v) for v in rng.integers(330, 500, 2))
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
    image = np.clip(image + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)
    folder = os.path.join(root, "train", f"c{i % 10}")
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
  open(done, "w").close()
  return root


def generate_tfds(folder: str, data_dir: str = GENERATED_TFDS) -> str:
  """The generated JPEGs as a prepared TFDS dataset ``mim_bench_jpegs`` in ``data_dir`` (the
  JPEG bytes as they are; kept between runs). Readers find it by name in ``data_dir`` without
  this builder class."""
  import tensorflow_datasets as tfds

  class MimBenchJpegs(tfds.core.GeneratorBasedBuilder):
    """The benchmark's JPEG folder, as TFDS records."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      from mim_jax.data import sources
      source = sources.open_source(f"folder:{folder}", {})
      labels = source.labels("train")
      for i in range(source.split_size("train")):
        yield i, {"image": source.file("train", i), "label": int(labels[i])}

  MimBenchJpegs(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def _reference_batches(dataset, data_dir, batch, image_size, cores, mode="train"):
  """The plain tf.data map over a folder's files or a TFDS dataset's encoded images."""
  import tensorflow as tf
  from mim_jax.data import sources
  source = sources.open_source(dataset, {"data_dir": data_dir or None})
  if isinstance(source, sources.TfdsSource):
    encoded_images = source.read("train", 0, source.split_size("train")).map(
        lambda encoded, label, i: encoded)
  else:
    files = [source.file("train", i) for i in range(source.split_size("train"))]
    encoded_images = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file)

  def load(encoded):
    shape = tf.image.extract_jpeg_shape(encoded)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4]), area_range=(0.2, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
    image = tf.image.resize(image, (image_size, image_size), method="bicubic")
    return tf.image.random_flip_left_right(image)

  def load_eval(encoded):
    image = tf.image.decode_jpeg(encoded, channels=3)
    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    resized = tf.cast(tf.round(hw * (image_size / 0.875) / tf.reduce_min(hw)), tf.int32)
    image = tf.image.resize(image, resized, method="bicubic")
    top, left = (resized[0] - image_size) // 2, (resized[1] - image_size) // 2
    return image[top:top + image_size, left:left + image_size]

  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  if mode == "eval":
    ds = encoded_images.repeat().map(load_eval, num_parallel_calls=cores)
  else:
    ds = encoded_images.repeat().shuffle(1000, seed=0).map(load, num_parallel_calls=cores)
  ds = ds.batch(batch, drop_remainder=True).prefetch(2)
  return iter(ds.with_options(options))


def _mim_batches(dataset, data_dir, pipeline, batch, image_size, cores, mode="train"):
  from mim_jax import config as config_lib
  from mim_jax import data
  c = config_lib.base_config("mae").data
  c.pipeline, c.num_workers = pipeline.split("_")[0], cores
  c.antialias = "_no_antialias" not in pipeline
  c.in_memory = "_in_memory" in pipeline
  if data_dir:
    c.data_dir = data_dir
  if mode == "eval":
    return data.eval_iterator(c, dataset, "train", global_batch_size=batch,
                              image_size=image_size, process_index=0, process_count=1)
  return data.train_iterator(c, dataset, "train", global_batch_size=batch, image_size=image_size,
                             seed=0, process_index=0, process_count=1)


def measure(args) -> dict:
  """One measurement, in this (pinned) process."""
  cores = int(args.cores)
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
  if args.pipeline == "reference":
    it = _reference_batches(args.dataset, args.data_dir, args.batch_size, args.image_size,
                            cores, args.mode)
  else:
    it = _mim_batches(args.dataset, args.data_dir, args.pipeline, args.batch_size,
                      args.image_size, cores, args.mode)
  passes = getattr(it, "num_batches", None)   # the evaluation iterator: one finite pass
  if passes is not None and args.batches + 1 >= passes:
    raise SystemExit(f"--mode eval: one pass is {passes} batches (the last padded); time at "
                     f"most {passes - 2} (--batches) or use more images")
  next(it)                                   # start-up and the first batch: untimed
  t0 = time.perf_counter()
  for _ in range(args.batches):
    next(it)
  seconds = time.perf_counter() - t0
  return {"images_per_sec": args.batches * args.batch_size / seconds, "seconds": seconds}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--folder", default="", help="a folder dataset (PATH/train/CLASS/*.jpg)")
  ap.add_argument("--generate", type=int, default=2000, help="JPEGs to generate without --folder")
  ap.add_argument("--tfds", default="",
                  help="also a prepared TFDS dataset, e.g. imagenette; 'generate': the JPEGs "
                       "as a TFDS dataset")
  ap.add_argument("--data_dir", default="", help="TFDS data_dir")
  ap.add_argument("--cores", default="", help="core counts, e.g. 1,2 (default: 1 .. all)")
  ap.add_argument("--pipelines", default="python,tf,tf_no_antialias",
                  help="mim_jax pipelines to time (tf_no_antialias: tf, data.antialias=False; "
                       "python_in_memory, tf_in_memory: data.in_memory)")
  ap.add_argument("--no_reference", action="store_true",
                  help="leave out the tf.data reference (it decodes JPEGs only)")
  ap.add_argument("--batch_size", type=int, default=64)
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--mode", choices=["train", "eval"], default="train",
                  help="the training iterator (RandomResizedCrop + flip) or the evaluation one "
                       "(resize + center crop)")
  ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)   # the worker
  ap.add_argument("--pipeline", default="", help=argparse.SUPPRESS)   # one measurement's
  ap.add_argument("--dataset", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.measure:
    print(json.dumps(measure(args)), flush=True)
    return 0
  available = len(os.sched_getaffinity(0))
  cores = [int(k) for k in args.cores.split(",")] if args.cores else list(range(1, available + 1))
  folder = args.folder or generate_folder(args.generate)
  workloads = [("folder", f"folder:{folder}", "")]
  if args.tfds == "generate":
    workloads.append(("tfds (generated)", "tfds:mim_bench_jpegs", generate_tfds(folder)))
  elif args.tfds:
    workloads.append((f"tfds:{args.tfds}", f"tfds:{args.tfds}", args.data_dir))
  pipelines = ([] if args.no_reference else ["reference"]) + [
      p for p in args.pipelines.split(",") if p]
  for name, dataset, data_dir in workloads:
    rates = {}
    for k in cores:
      for _ in range(args.rounds):
        for pipeline in pipelines:
          cmd = [sys.executable, "-m", "benchmarks.input_pipeline", "--measure",
                 "--pipeline", pipeline, "--dataset", dataset, "--data_dir", data_dir,
                 "--cores", str(k), "--batch_size", str(args.batch_size),
                 "--image_size", str(args.image_size), "--batches", str(args.batches),
                 "--mode", args.mode]
          out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
          if out.returncode:
            raise SystemExit(f"{pipeline} at {k} cores failed:\n{out.stderr[-3000:]}")
          rates.setdefault((pipeline, k), []).append(
              json.loads(out.stdout.strip().splitlines()[-1])["images_per_sec"])
    load = os.getloadavg()[0]
    for (pipeline, k), values in sorted(rates.items()):
      print(json.dumps({"workload": name, "mode": args.mode, "pipeline": pipeline, "cores": k,
                        "images_per_sec": round(statistics.median(values), 1),
                        "rounds": [round(v, 1) for v in values], "batch_size": args.batch_size,
                        "image_size": args.image_size, "load_after": round(load, 2)}),
            flush=True)
    summary = {"workload": name, "mode": args.mode, "summary": True}
    for pipeline in pipelines:
      if pipeline == "reference":
        continue
      for k in cores:
        if (pipeline, k) not in rates:
          continue
        rate = statistics.median(rates[(pipeline, k)])
        if ("reference", k) in rates:
          summary[f"{pipeline}_over_reference_{k}"] = round(
              rate / statistics.median(rates[("reference", k)]), 3)
        if (pipeline, 1) in rates:
          summary[f"{pipeline}_scaling_{k}"] = round(
              rate / (k * statistics.median(rates[(pipeline, 1)])), 3)
    print(json.dumps(summary), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
