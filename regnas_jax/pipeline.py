"""The main job behind ``run_search.py``: build a space and its supernet, train it (resuming
from the work directory), score subnets, and write the results to the work directory.

Until the REG-NAS search lands, the job reports the test accuracy of the largest and smallest
subnets and scores a sampled population (min, max and random subnets) on the holdout-validation
split, each subnet with its own re-calibrated BN statistics.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import checkpoint as ckpt_lib
from regnas_jax import data as data_lib
from regnas_jax import evaluate, spaces
from regnas_jax import train as train_lib
from regnas_jax import nn as nets
from regnas_jax.nn.common import init_variables


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the offending key."""


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_space(cfg) -> spaces.SearchSpace:
  sc = dict(cfg.space)
  name = sc.pop("name", None)
  try:
    return spaces.get_space(name, **{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in sc.items()})
  except spaces.InvalidSpaceError as e:
    raise ConfigError(f"config.space: {e}") from None


def build_supernet(cfg, space):
  opts = dict(cfg.supernet)
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if opts.get("dtype") not in dtypes:
    raise ConfigError(f"config.supernet.dtype: {opts.get('dtype')!r} is not one of {tuple(dtypes)}")
  opts["dtype"] = dtypes[opts["dtype"]]
  if opts.get("depthwise_impl") not in nets.ops.DEPTHWISE_IMPLS:
    raise ConfigError(f"config.supernet.depthwise_impl: {opts.get('depthwise_impl')!r} is not one "
                      f"of {nets.ops.DEPTHWISE_IMPLS}")
  try:
    return nets.build_supernet(space, **opts)
  except TypeError as e:
    raise ConfigError(f"config.supernet: {e}") from None


DATASETS = ("digits", "cifar10", "tfds")


def load_dataset(cfg, space) -> data_lib.Dataset:
  """The dataset of ``cfg.data`` (errors name the config key)."""
  dc = cfg.data
  val = int(dc.val_size) if dc.val_size else 5000
  size = int(dc.image_size) if dc.image_size else max(space.resolutions)
  try:
    if dc.name == "digits":
      ds = data_lib.load_digits(size, seed=dc.split_seed)
    elif dc.name == "cifar10":
      if not dc.path:
        raise ConfigError("config.data.path: give the packed CIFAR-10 file "
                          "(--config.data.path=/path/to/cifar10_jpeg.npz)")
      ds = data_lib.load_cifar10_npz(dc.path, val_size=val, seed=dc.split_seed,
                                     cache_dir=dc.cache_dir or None)
    else:
      if not dc.tfds_name:
        raise ConfigError("config.data.tfds_name: name the tfds dataset (e.g. cifar10)")
      ds = data_lib.load_tfds(dc.tfds_name, dc.tfds_dir or None, size, val, dc.split_seed)
  except data_lib.DataError as e:
    raise ConfigError(str(e)) from None
  if ds.num_classes != space.num_classes:
    raise ConfigError(f"config.space.num_classes: {ds.name} has {ds.num_classes} classes, "
                      f"got {space.num_classes}")
  return ds


def check_config(cfg) -> None:
  if cfg.data.name not in DATASETS:
    raise ConfigError(f"config.data.name: {cfg.data.name!r} is not one of {DATASETS}")
  sc = cfg.score
  if not (isinstance(sc.population, int) and sc.population >= 0):
    raise ConfigError(f"config.score.population: must be an integer >= 0, got {sc.population!r}")
  if not (isinstance(sc.get("max_images", 0), int) and sc.get("max_images", 0) >= 0):
    raise ConfigError(f"config.score.max_images: must be an integer >= 0 (0: all), "
                      f"got {sc.max_images!r}")
  if sc.chunk_size is not None and not (isinstance(sc.chunk_size, int) and sc.chunk_size >= 1):
    raise ConfigError(f"config.score.chunk_size: must be a positive integer, got {sc.chunk_size!r}")
  for key in ("batch_size", "checkpoint_every", "log_every", "progress_every", "calib_images",
              "calib_batch_size"):
    v = cfg.train[key]
    if not (isinstance(v, int) and v >= 1):
      raise ConfigError(f"config.train.{key}: must be a positive integer, got {v!r}")


def supernet_fns(net):
  """(init_fn, reorder_fn) of a supernet module."""
  init_fn = lambda key: init_variables(net, key)
  reorder_fn = None
  if isinstance(net, nets.OFAMobileNetV3):
    reorder_fn = lambda v, keep: nets.ofa_mbv3.reorder_channels(net, v, keep)
  return init_fn, reorder_fn


def score(cfg, net, space, variables, dataset, pop, split: str):
  """Per-member accuracy on ``split`` ('val' or 'test'), BN re-calibrated per member."""
  res_idx = np.asarray(pop.resolution)
  acc = np.zeros(len(res_idx))
  src = getattr(dataset, split)
  limit = int(cfg.score.get("max_images", 0) or 0)
  if 0 < limit < len(src):  # smoke runs: a fixed random subset (splits may be sorted by class)
    src = data_lib.SubsetSource(src, np.sort(np.random.default_rng([cfg.seed, 13]).permutation(
        len(src))[:limit]))
  for r_i in np.unique(res_idx):
    r = space.resolutions[r_i]
    members = np.flatnonzero(res_idx == r_i)
    group = jax.tree.map(lambda x: x[members], pop)
    t = time.time()
    calib_src = data_lib.SubsetSource(dataset.train, np.random.default_rng(
        [cfg.seed, 11]).permutation(len(dataset.train))[:cfg.train.calib_images])
    calib_x, _ = data_lib.eval_images(calib_src, r, dataset.mean, dataset.std)
    calib = evaluate.calibration_batches(calib_x, len(calib_x), cfg.train.calib_batch_size,
                                         cfg.seed)
    x, y = data_lib.eval_images(src, r, dataset.mean, dataset.std)
    ok = evaluate.score_population(net, variables, group, calib, x, y,
                                   chunk_size=cfg.score.chunk_size)
    acc[members] = ok.mean(1)
    _log(f"scored {len(members)} subnet(s) at {r} px on {len(y)} {split} images "
         f"({time.time() - t:.1f} s, compile included)")
  return acc


STAGES = ("train", "score")


def run(cfg, workdir: str, stop_after: str = "score") -> dict:
  """Run the job described by ``cfg``: train (or resume) the supernet, then score subnets.

  Writes ``checkpoints/``, ``metrics.jsonl`` and ``results.json`` into ``workdir``.
  ``stop_after='train'`` ends after training (the checkpoints hold the supernet).
  """
  if stop_after not in STAGES:
    raise ConfigError(f"--stop_after: {stop_after!r} is not one of {STAGES}")
  check_config(cfg)
  space = build_space(cfg)
  net = build_supernet(cfg, space)
  try:
    train_lib.build_phases(cfg.train, space)
  except train_lib.TrainConfigError as e:
    raise ConfigError(str(e)) from None
  dataset = load_dataset(cfg, space)
  _log(f"space {space.name}: {space.num_archs():.2e} subnets per resolution, "
       f"resolutions {space.resolutions}; data {dataset.name} ({len(dataset.train)} train / "
       f"{len(dataset.val)} val / {len(dataset.test)} test); backend {jax.default_backend()}")
  init_fn, reorder_fn = supernet_fns(net)
  try:
    tr = train_lib.train(cfg, net, space, dataset, workdir, init_fn, reorder_fn, log=_log)
  except (train_lib.TrainConfigError, data_lib.DataError, ckpt_lib.CheckpointError) as e:
    raise ConfigError(str(e)) from None
  variables = tr.variables
  if stop_after == "train":
    return {"training": {"steps": tr.steps, "seconds_this_process": tr.seconds}}

  ends = spaces.stack([space.max_arch(), space.min_arch()])
  test_acc = score(cfg, net, space, variables, dataset, ends, "test")
  _log(f"test top-1: max subnet {100 * test_acc[0]:.2f}%, min subnet {100 * test_acc[1]:.2f}%")

  key = jax.random.fold_in(jax.random.key(cfg.seed), 99)
  pop = spaces.stack([space.max_arch(), space.min_arch()] + [
      spaces.member(space.sample(key, cfg.score.population), i)
      for i in range(cfg.score.population)])
  pop = jax.tree.map(np.asarray, pop)
  val_acc = score(cfg, net, space, variables, dataset, pop, "val")
  macs, params = space.macs(pop), space.params(pop)
  rows = [{"arch": space.to_json(spaces.member(pop, i)), "summary": space.format(spaces.member(pop, i)),
           "macs": int(macs[i]), "params": int(params[i]), "val_top1": float(val_acc[i])}
          for i in range(len(val_acc))]
  results = {"config": cfg.to_dict(), "space": space.config(), "jax": jax.__version__,
             "backend": jax.default_backend(),
             "training": {"steps": tr.steps, "seconds_this_process": round(tr.seconds, 2),
                          "resumed_from": tr.resumed_from,
                          "phases": [p.to_json() for p in tr.phases]},
             "test_top1": {"max": float(test_acc[0]), "min": float(test_acc[1])},
             "subnets": rows}
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  print(format_table(rows))
  _log(f"wrote {os.path.join(workdir, 'results.json')}")
  return results


def format_table(rows) -> str:
  lines = ["| # | MMACs | params (M) | val top-1 | subnet |", "|---|---:|---:|---:|---|"]
  for i, r in enumerate(rows):
    lines.append(f"| {i} | {r['macs'] / 1e6:.2f} | {r['params'] / 1e6:.3f} | "
                 f"{100 * r['val_top1']:.1f}% | {r['summary']} |")
  return "\n".join(lines)


def write_json_atomic(path: str, obj: Any) -> None:
  """Write JSON via a temporary file and a rename, so a crash never leaves half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=_json_default)
  os.replace(tmp, path)


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, (np.ndarray, tuple)):
    return list(np.asarray(x).tolist())
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")
