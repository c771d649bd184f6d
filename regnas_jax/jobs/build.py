"""From a config to the objects every job uses: checks of the shared sections, the space, the
supernet and the dataset.  Every fault is a :class:`~regnas_jax.errors.ConfigError` (or a
:class:`~regnas_jax.errors.DataError` for a dataset that cannot be read) naming the key."""

from __future__ import annotations

import math
import os

import jax.numpy as jnp

from regnas_jax import data as data_lib
from regnas_jax.data import pipeline
from regnas_jax import nn as nets
from regnas_jax import spaces
from regnas_jax.errors import ConfigError, InvalidSpaceError
from regnas_jax.training import METHODS, OPTIMIZERS, SUBNET_LOOPS

DATASETS = ("digits", "cifar10", "cifar100", "folder", "npz", "tfds")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _int(v, lo: int) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_number(section: str, key: str, v, lo: float, hi: float = math.inf, *,
                 lo_open: bool = False, hi_open: bool = False) -> None:
  """Raise :class:`ConfigError` unless ``v`` is a finite number in the given interval."""
  ok = _number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  if not ok:
    rng = (f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
           if math.isfinite(hi) else f"{'>' if lo_open else '>='} {lo:g}")
    raise ConfigError(f"config.{section}.{key}: must be a finite number {'in ' if math.isfinite(hi) else ''}"
                      f"{rng}, got {v!r}")


def check_common(cfg, dataset_given: bool = False) -> None:
  """The sections every job reads: ``data`` (unless the dataset is given from Python), ``score``
  and ``train``."""
  if not dataset_given and cfg.data.name not in DATASETS:
    raise ConfigError(f"config.data.name: {cfg.data.name!r} is not one of {DATASETS}")
  sc = cfg.score
  for key, lo in (("block_size", 1), ("batch_size", 1), ("max_images", 0)):
    if not _int(sc.get(key), lo):
      raise ConfigError(f"config.score.{key}: must be an integer >= {lo}, got {sc.get(key)!r}")
  if not isinstance(sc.get("switch", False), bool):
    raise ConfigError(f"config.score.switch: must be True or False, got {sc.get('switch')!r}")
  if sc.chunk_size is not None and not _int(sc.chunk_size, 1):
    raise ConfigError(f"config.score.chunk_size: must be a positive integer, got {sc.chunk_size!r}")
  tc = cfg.train
  for key in ("batch_size", "checkpoint_every", "log_every", "progress_every", "calib_images",
              "calib_batch_size", "max_to_keep"):
    if not _int(tc[key], 1):
      raise ConfigError(f"config.train.{key}: must be a positive integer, got {tc[key]!r}")
  if not isinstance(tc.get("switch", False), bool):
    raise ConfigError(f"config.train.switch: must be True or False, got {tc.get('switch')!r}")
  for key in ("steps", "warmup_steps", "max_nonfinite_steps"):
    if key in tc and not _int(tc[key], 0):
      raise ConfigError(f"config.train.{key}: must be an integer >= 0, got {tc[key]!r}")
  check_number("train", "lr", tc.lr, 0, lo_open=True)
  check_number("train", "momentum", tc.momentum, 0, 1, hi_open=True)
  check_number("train", "weight_decay", tc.weight_decay, 0)
  check_number("train", "label_smoothing", tc.label_smoothing, 0, 1, hi_open=True)
  check_number("train", "kd_ratio", tc.kd_ratio, 0)
  check_number("train", "grad_clip_norm", tc.grad_clip_norm, 0)
  if tc.optimizer not in OPTIMIZERS:
    raise ConfigError(f"config.train.optimizer: {tc.optimizer!r} is not one of {OPTIMIZERS}")
  if tc.subnet_loop not in SUBNET_LOOPS:
    raise ConfigError(f"config.train.subnet_loop: {tc.subnet_loop!r} is not one of "
                      f"{SUBNET_LOOPS}")
  if tc.method not in METHODS + ("tunas",):
    raise ConfigError(f"config.train.method: {tc.method!r} is not one of {METHODS}")
  dt = cfg.supernet.get("dtype")
  if dt not in DTYPES:
    raise ConfigError(f"config.supernet.dtype: {dt!r} is not one of {tuple(DTYPES)}")


def build_space(cfg) -> spaces.SearchSpace:
  sc = dict(cfg.space)
  name = sc.pop("name", None)
  try:
    return spaces.get_space(name, **{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in sc.items()})
  except InvalidSpaceError as e:
    raise ConfigError(f"config.space: {e}") from None


def build_supernet(cfg, space):
  """The supernet registered for ``space`` with the options of ``config.supernet``."""
  opts = {k: v for k, v in cfg.supernet.items() if k not in ("init_from",)}
  opts["dtype"] = DTYPES[opts.get("dtype", "float32")]
  if "depthwise_impl" in opts and opts["depthwise_impl"] not in nets.ops.DEPTHWISE_IMPLS:
    raise ConfigError(f"config.supernet.depthwise_impl: {opts.get('depthwise_impl')!r} is not one "
                      f"of {nets.ops.DEPTHWISE_IMPLS}")
  path = cfg.supernet.get("init_from", "")
  if path and not os.path.exists(path):   # checked before the work dir is created
    raise ConfigError(f"config.supernet.init_from: {path}: no such file or directory (an OFA "
                      f"checkpoint file or a directory written by regnas_jax.convert)")
  try:
    return nets.build_supernet(space, **opts)
  except TypeError as e:
    raise ConfigError(f"config.supernet: {e}") from None


def _need_path(dc, what: str, hint: str = "") -> str:
  if not dc.path:
    raise ConfigError(f"config.data.path: give {what} (--config.data.path=PATH{hint})")
  return dc.path


def _read_dataset(cfg, space, decode: str) -> data_lib.Dataset:
  """The dataset ``cfg.data`` names (module docstring of :mod:`regnas_jax.data`)."""
  dc = cfg.data
  val = int(dc.val_size) if dc.val_size else 5000
  size = int(dc.image_size) if dc.image_size else max(space.resolutions)
  if dc.name == "digits":
    return data_lib.load_digits(size, seed=dc.split_seed)
  if dc.name in ("cifar10", "cifar100"):
    path = _need_path(dc, f"the {dc.name} archive as distributed (.tar.gz, binary or python "
                          f"version), its folder, or a packed .npz")
    return data_lib.load_cifar(dc.name, path, val_size=val, seed=dc.split_seed,
                               cache_dir=dc.cache_dir or None, decode=decode)
  if dc.name == "npz":
    return data_lib.load_packed_npz(_need_path(dc, "the packed .npz file"), val_size=val,
                                    seed=dc.split_seed, cache_dir=dc.cache_dir or None,
                                    decode=decode)
  if dc.name == "folder":
    path = _need_path(dc, "the image folder DIR holding DIR/train/<class>/*.jpg and "
                          "DIR/val/<class>/*.jpg", "; for a smoke run, `python -m "
                          "regnas_jax.data.synthetic DIR` writes a small one")
    return data_lib.load_folder(path, size, val_size=val, seed=dc.split_seed)
  if not dc.tfds_name:
    raise ConfigError("config.data.tfds_name: name the tfds dataset (e.g. cifar10)")
  return data_lib.load_tfds(dc.tfds_name, dc.tfds_dir or None, size, val, dc.split_seed,
                            download=bool(dc.get("download", False)))


def load_dataset(cfg, space, dataset: data_lib.Dataset | None = None) -> data_lib.Dataset:
  """The dataset of ``cfg.data`` (errors name the config key), or ``dataset`` given from Python
  (checked against the space and the batch size alike)."""
  if dataset is not None and not isinstance(dataset, data_lib.Dataset):
    raise ConfigError(f"dataset: a regnas_jax.data.Dataset is needed (data.from_arrays, "
                      f"data.from_sources), got {type(dataset).__name__}")
  decode = pipeline.settings(cfg)["decode"]   # config.input checked before anything is read
  ds = _read_dataset(cfg, space, decode) if dataset is None else dataset
  if ds.num_classes != space.num_classes:
    raise ConfigError(f"config.space.num_classes: {ds.name} has {ds.num_classes} classes, "
                      f"got {space.num_classes}")
  data_lib.epoch_batch_indices(len(ds.train), cfg.train.batch_size, 0, cfg.seed)
  return ds


def with_given_dataset(cfg, dataset: data_lib.Dataset):
  """A copy of ``cfg`` whose ``data`` section describes ``dataset`` (given from Python): its
  name, sizes and :func:`data.fingerprint`, what a work dir's identity is then checked against
  (a run resumes only on the same data)."""
  import ml_collections

  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.data = ml_collections.ConfigDict(dict(
        name=dataset.name, source="python", fingerprint=data_lib.fingerprint(dataset),
        num_classes=dataset.num_classes, image_size=dataset.image_size,
        sizes=[len(dataset.train), len(dataset.val), len(dataset.test)]))
  return out


def describe(space, dataset) -> str:
  """The line every job logs before it starts."""
  import jax

  return (f"space {space.name}: {space.num_archs():.2e} subnets per resolution, resolutions "
          f"{space.resolutions}; data {dataset.name} ({len(dataset.train)} train / "
          f"{len(dataset.val)} val / {len(dataset.test)} test); backend {jax.default_backend()}")
