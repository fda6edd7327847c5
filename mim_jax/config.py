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
  # --- AMT: attention-driven masking and throwing (amt.md), on with model.masking='amt' ---
  c.amt = ConfigDict(dict(
      mask_ratio=0.45, throw_ratio=0.40,      # MAE's; SimMIM's are 0.44 / 0.26 (on mask cells)
      start_epoch=40.0,          # plain random masking before; first attention refresh at it
      interval_epochs=40.0,      # refresh the attention maps every this many epochs
      throw_lowest=False,        # throw the lowest-weight patches (the paper's figure)
      faithful_crop_bug=False,   # align maps with the crop as the released code does (wrongly)
      batch_size=256,            # global batch of the refresh pass
      images=8))                 # images in the PNG written at each refresh
  # --- MI-MAE (mi_mae.md): the views and the weights of the information terms ---
  c.mi_mae = ConfigDict(dict(
      num_masks=4,               # views per image
      mask_mode="partition",     # partition (complementary) | independent (model.mask_ratio)
      temperature=0.07,          # InfoNCE
      lambda_max=1.0,            # InfoNCE maximization (our mapping of the seed's 1 / 1 / 10)
      lambda_min=1.0,            # CLUB minimization
      lambda_approx=10.0,        # weight of V's NLL in V's own loss: under V's Adam it only
                                 # rescales the gradient, which Adam normalizes away
      pool="mean",               # mean (of the visible tokens) | cls
      projector_dim=0,           # > 0: a 2-layer MLP projector of this width on z
      club_negatives="views",    # views (the same image's other views) | batch (standard CLUB)
      min_per_dim=True,          # L_min = CLUB / latent dims (nats per dimension); False: CLUB
                                 #   summed over dimensions (nats), as the CLUB reference sums
      v_hidden=512,              # V's hidden width
      v_lr=3e-3,                 # V's own AdamW (0.9, 0.999): its lr, fitted before each update
      v_weight_decay=0.0,        #   of the encoder on the new latents (the CLUB reference: Adam)
      v_schedule="constant",     #   constant (the CLUB reference) | cosine (the run's warmup and
                                 #   cosine shape, peaking at v_lr)
      v_steps=5,                 # V's updates per training step, before the encoder's (1 at
                                 #   lr 1e-3 lets V's NLL climb as the encoder moves, digits)
      club_start=100,            # L_min is switched on from this step on (V's NLL falls to a
                                 #   third of its first value within 100 steps on digits) ...
      club_start_nll=0.0,        # ... and, when > 0, once V's NLL (mi/v_nll) is at most this
      epoch_unit="images"))      # images | views: what total_epochs / warmup_epochs count
  # --- MLO-MAE (mlo_mae.md): the three levels, their data and the hypergradient ---
  c.mlo = ConfigDict(dict(
      hypergrad="finite_difference",   # finite_difference (official) | jvp | unroll
      unroll_steps=2,            # K: theta updates per round (then one psi, one phi update)
      fd_alpha=0.01,             # finite differences: eps = fd_alpha / ||direction||
      remat=True,                # unroll: recompute each inner step in the backward pass
      eps_root=1e-16,            # unroll: AdamW's eps inside the sqrt (differentiable at 0)
      heldout_fraction=0.2,      # stage III's share of train_split: a class-stratified draw
                                 #   (seed: config.seed); stages I and II get the rest
      stage1_uses_all_train=False,  # the official CIFAR code: stage I on all of train_split
      head_lr=4e-5, head_weight_decay=0.01, head_batch_size=0,        # psi; batch 0 = batch_size
      masker_lr=4e-5, masker_weight_decay=0.01, masker_batch_size=0,  # phi
      head_dropout=0.1,
      masker_hidden=512,
      learnable_pos=True,        # the encoder's sin-cos table is a parameter (official models)
      learnable_decoder_pos=True))  # the decoder's too (official models: requires_grad=True)
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
  c.model = methods.get(method).default_model_config()
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


def _lookup(config, dotted):
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
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
        raise ConfigError(f"unknown config key {name!r}")
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

