"""Config defaults, config-file loading, command-line overrides and validation.

A config file is a Python file with ``get_config(arg)``; ``arg`` is the text after ``:`` in
``--config configs/X.py:variant=B/16,runlocal``. Config files start from ``base_config(method)``,
which is locked: assigning a key that does not exist fails at once, naming the key.
Overrides ``--config.a.b=value`` are checked the same way, and their values must have the type
of the default they replace.
"""

import ast
import difflib
import importlib.util
import json
import os

import traceback

from ml_collections import ConfigDict

from mim_jax.core.errors import UserError


class ConfigError(UserError, ValueError):
  """A config file or override that cannot be used."""


def parse_arg(arg, **defaults):
  """'variant=B/16,runlocal' -> ConfigDict(variant='B/16', runlocal=True), over ``defaults``.

  A bare word sets a boolean True; values are parsed as Python literals when possible.
  Unknown words are an error naming them.
  """
  out = ConfigDict(dict(defaults))
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r}; this config accepts {sorted(defaults)}")
    out[key] = _literal(value) if eq else True
  return out


def choose(name: str, value, options):
  """``value`` of the config argument ``name`` if it is one of ``options``, else a ConfigError
  naming them."""
  options = tuple(options)
  if value not in options:
    raise ConfigError(f"{name} must be one of {options}, got {value!r}")
  return value


def _literal(text):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def base_config(method: str = "mae") -> ConfigDict:
  """Every key a run may set: trainer, data, optimizer, evaluators, and the method's model."""
  from mim_jax import methods  # local import: methods import models, not config
  c = ConfigDict()
  c.method = method
  c.seed = 0
  # --- data ---
  c.dataset = "digits"           # digits | tfds:NAME | folder:PATH
  # Splits: TFDS-style strings, sliced or not ('train[:80%]'), naming a base split of the
  # dataset or a role: 'train', or 'evaluation' = the first of validation / val / test that the
  # dataset has (digits: test; folder: its val/ or test/; ImageNet: validation).
  c.train_split = "train"
  c.train_fraction = 1.0         # < 1: train on a class-stratified draw of this share of
                                 #   train_split (seed 0: the same examples in every run), e.g.
                                 #   0.1 to fine-tune with 10% of the labels
  c.image_size = 224
  c.data = ConfigDict(dict(
      data_dir="", crop_scale=(0.2, 1.0), crop_ratio=(0.75, 4.0 / 3.0), flip=True,
      eval_crop_pct=0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
      shuffle_buffer=10_000, num_workers=2, prefetch=2,
      in_memory=False,            # folder datasets: decode each split once into memory
                                  #   (same-sized images); batches augmented at once
      on_device=False,            # small datasets: each split decoded once onto the devices,
                                  #   batches gathered and augmented there (data/on_device.py)
      pipeline="tf",              # tf (tf.data, C++ threads; uint8 batches normalized on
                                  #   the devices) | python (threads, PIL; the digits demos')
      antialias=True,             # resize as PIL / torchvision; False (pipeline tf only):
                                  #   plain bicubic when downscaling, faster, aliased
      randaugment="",             # e.g. 'rand-m9-mstd0.5-inc1' (fine-tuning); '' = off
      random_erase=0.0))          # probability of erasing a box (fine-tuning: 0.25)
  # --- schedule and optimizer (lr = blr * batch_size / 256) ---
  c.batch_size = 4096            # global, over all devices and hosts
  c.total_epochs = 800.0
  c.total_steps = 0              # > 0 overrides total_epochs
  c.warmup_epochs = 40.0
  c.optimizer = ConfigDict(dict(
      name="adamw",               # adamw | lars
      blr=1.5e-4, b1=0.9, b2=0.95, weight_decay=0.05, min_lr=0.0, grad_clip_norm=0.0,
      schedule="cosine",          # cosine (to min_lr) | multistep (x decay_rate at decay_epochs)
      warmup_lr=0.0,              # lr at step 0, rising linearly to the peak over the warmup
      decay_epochs=(), decay_rate=0.1,         # multistep
      momentum=0.9, trust_coefficient=0.001,   # lars
      layer_decay=1.0,            # layer-wise lr decay (fine-tuning: 0.65 - 0.75); 1 = off
      wd_exclude=()))             # regexes of parameter paths without weight decay (besides 1-D)
  c.steps_per_call = 1           # > 1: that many optimizer steps in one jitted call (lax.scan)
  c.ema_decay = 0.0              # > 0 keeps an exponential moving average of the weights
  c.compute_dtype = "float32"    # float32 | bfloat16 (parameters stay float32)
  # --- logging, checkpoints, images ---
  c.log_every = 50
  c.image_every = 5000           # PNG grid of original | masked | reconstruction
  c.checkpoint = ConfigDict(dict(every_steps=1000, keep=3, async_save=True))
  # --- fast probe evaluator (evaluation.md: a cheap curve during pre-training) ---
  c.probe = ConfigDict(dict(
      enabled=True, every_steps=5000, train_split="train", test_split="evaluation",
      train_examples=10_000, test_examples=10_000,  # seeded class-stratified draws (0 = all)
      batch_size=256, pool="cls",
      random_init=False, l2=1e-3, max_iter=1000))
  # --- classification accuracy (fine-tuning, linear probing): top-1 / top-5 ---
  c.eval = ConfigDict(dict(split="evaluation", every_steps=5000, batch_size=256,
                           max_examples=0))      # > 0: a seeded class-stratified draw; 0 = all
  # --- kNN evaluator (k nearest neighbours, cosine, temperature-weighted votes) ---
  c.knn = ConfigDict(dict(
      enabled=False, every_steps=5000, train_split="train", test_split="evaluation",
      train_examples=0, test_examples=0,  # > 0: seeded class-stratified draws; 0 = all
      batch_size=256, pool="cls", k=20, temperature=0.07))
  # --- restoring and evaluating earlier runs ---
  c.init_from = ""               # a workdir whose checkpoint initializes the parameters
  c.init_step = -1               # its step; -1 = latest
  c.eval_only = False            # run the evaluators on the initial parameters and stop
  # --- devices: the data x fsdp mesh (mim_jax/core/sharding.py) and multi-host ---
  c.mesh = ConfigDict(dict(
      fsdp=1,                    # devices per parameter shard group; 1 = plain data parallelism
      rules=((".*", "fsdp"),),   # (regex over state paths, 'fsdp' | 'replicate'), first match
      min_shard_size=2 ** 14))   # arrays with fewer elements stay replicated
  c.distributed = ConfigDict(dict(  # jax.distributed; SLURM and Cloud TPU are auto-detected
      enabled=False, coordinator_address="", num_processes=0, process_id=-1))
  cls = methods.get(method)
  c.model = cls.default_model_config()
  for name, group in cls.config_groups().items():  # the method's own groups (amt, mi_mae, mlo)
    c[name] = group
  c.lock()
  return c


def load(spec: str) -> ConfigDict:
  """Loads ``path.py[:arg]`` by calling its ``get_config(arg)``."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found")
  module_spec = importlib.util.spec_from_file_location("_mim_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path!r} line {e.lineno}: syntax error: {e.msg}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path!r} failed to load{_where(e, path)}: "
                      f"{type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config(arg)")
  try:
    config = module.get_config(arg or None)
  except ConfigError:
    raise
  except (AttributeError, KeyError) as e:
    raise ConfigError(f"config file {path!r} sets an unknown key{_where(e, path)}: {e}") from None
  except ValueError as e:
    raise ConfigError(f"config file {path!r}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"config file {path!r}{_where(e, path)}: {type(e).__name__}: {e}") from None
  validate(config)
  return config


def _where(error, path) -> str:
  """' (line N)' of the innermost frame of ``error`` in the file ``path``, or ''."""
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f" (line {lines[-1]})" if lines else ""


def group_owners(name: str) -> list:
  """The methods whose runs carry the top-level config group ``name`` (``Method.config_groups``)."""
  from mim_jax import methods
  return [m for m in methods.names() if name in methods.get(m).config_groups()]


def _not_this_methods(name: str, method: str):
  """A ConfigError for a key of another method's group, or None when no method owns ``name``."""
  owners = group_owners(name)
  if not owners:
    return None
  return ConfigError(f"config group {name!r} belongs to the method(s) {', '.join(owners)}; this "
                     f"run's method is {method!r}, whose config has no {name!r} group")


def _lookup(config, dotted):
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    if i == 0 and part not in config and "method" in config:
      error = _not_this_methods(part, config.method)
      if error:
        raise error
    if not isinstance(node, ConfigDict) or part not in node:
      known = list(node.keys()) if isinstance(node, ConfigDict) else []
      near = difflib.get_close_matches(part, known, n=1)
      hint = f" (did you mean {'.'.join(parts[:i] + near)!r}?)" if near else ""
      raise ConfigError(f"unknown config key {dotted!r}{hint}")
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def _coerce(key, value, default):
  """Checks ``value`` against the type of ``default``; int -> float and list -> tuple allowed."""
  if isinstance(default, bool):
    if isinstance(value, bool):
      return value
  elif isinstance(default, float):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif isinstance(default, int):
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif isinstance(default, str):
    return str(value)
  elif isinstance(default, (tuple, list)):
    if isinstance(value, (tuple, list)):
      return tuple(value)
  elif default is None:
    return value
  raise ConfigError(f"config key {key!r} expects {type(default).__name__} "
                    f"(default {default!r}), got {value!r}")


def override(config: ConfigDict, dotted: str, text: str) -> None:
  """Applies one ``--config.dotted=text`` override."""
  node, leaf = _lookup(config, dotted)
  if isinstance(node[leaf], ConfigDict):
    raise ConfigError(f"config key {dotted!r} is a group; set one of its fields "
                      f"({', '.join(node[leaf].keys())})")
  value = text if isinstance(node[leaf], str) else _literal(text)
  with node.unlocked():
    node[leaf] = _coerce(dotted, value, node[leaf])


def validate(config: ConfigDict) -> None:
  """Checks a loaded config against ``base_config`` of its method: no unknown keys, right types."""
  if "method" not in config:
    raise ConfigError("config has no 'method' key; start config files from base_config(method)")
  from mim_jax import methods
  if config.method not in methods.names():
    raise ConfigError(f"unknown method {config.method!r}; known: {methods.names()}")
  reference = base_config(config.method)

  def walk(node, ref, prefix):
    for key in node.keys():
      name = prefix + key
      if key not in ref:
        error = _not_this_methods(key, config.method) if not prefix else None
        raise error or ConfigError(f"unknown config key {name!r}")
      if isinstance(ref[key], ConfigDict):
        if not isinstance(node[key], ConfigDict):
          raise ConfigError(f"config key {name!r} must be a group")
        walk(node[key], ref[key], name + ".")
      else:
        _coerce(name, node[key], ref[key])
  walk(config, reference, "")


def save(config: ConfigDict, workdir: str, name: str = "config.json") -> str:
  """Writes the resolved config as JSON (atomically) and returns its path."""
  path = os.path.join(workdir, name)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path

