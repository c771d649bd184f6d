"""The main job behind ``run_search.py``: build a space and its supernet, score subnets, and
write the results to the work directory.

Until supernet training and the REG-NAS search land, the job scores a sampled population
(min, max and random subnets) of an untrained supernet on the holdout-validation split.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import data as data_lib
from regnas_jax import evaluate, spaces
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


DATASETS = ("digits",)


def load_data(cfg, resolution: int):
  return data_lib.load_digits(resolution, seed=cfg.data.split_seed)


def check_config(cfg) -> None:
  if cfg.data.name not in DATASETS:
    raise ConfigError(f"config.data.name: {cfg.data.name!r} is not available yet "
                      f"(known: {', '.join(DATASETS)})")
  sc = cfg.score
  if not (isinstance(sc.population, int) and sc.population >= 0):
    raise ConfigError(f"config.score.population: must be an integer >= 0, got {sc.population!r}")
  if sc.chunk_size is not None and not (isinstance(sc.chunk_size, int) and sc.chunk_size >= 1):
    raise ConfigError(f"config.score.chunk_size: must be a positive integer, got {sc.chunk_size!r}")
  if sc.bn not in ("batch", "running"):
    raise ConfigError(f"config.score.bn: {sc.bn!r} is not one of ('batch', 'running')")


def run(cfg, workdir: str) -> dict:
  """Run the job described by ``cfg`` and write ``results.json`` into ``workdir``."""
  check_config(cfg)
  space = build_space(cfg)
  net = build_supernet(cfg, space)
  if cfg.space.num_classes != 10:
    raise ConfigError(f"config.space.num_classes: digits has 10 classes, got {cfg.space.num_classes}")
  _log(f"space {space.name}: {space.num_archs():.2e} subnets per resolution, "
       f"resolutions {space.resolutions}; backend {jax.default_backend()}")
  key = jax.random.key(cfg.seed)
  k_init, k_pop = jax.random.split(key)
  t = time.time()
  variables = init_variables(net, k_init)
  n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
  _log(f"supernet initialised: {n_params / 1e6:.2f} M parameters ({time.time() - t:.1f} s)")

  pop = spaces.stack([space.min_arch(), space.max_arch()] + [
      spaces.member(space.sample(k_pop, cfg.score.population), i)
      for i in range(cfg.score.population)])
  pop = jax.tree.map(np.asarray, pop)
  res_idx = np.asarray(pop.resolution)
  correct = np.zeros(len(res_idx))
  for r_i in np.unique(res_idx):
    r = space.resolutions[r_i]
    members = np.flatnonzero(res_idx == r_i)
    val = load_data(cfg, r).val
    group = jax.tree.map(lambda x: x[members], pop)
    t = time.time()
    ok = evaluate.population_correct(net, variables, val.images, val.labels, group,
                                     train=cfg.score.bn == "batch",
                                     chunk_size=cfg.score.chunk_size)
    correct[members] = ok.mean(1)
    _log(f"scored {len(members)} subnets at {r} px on {len(val.labels)} validation images "
         f"({time.time() - t:.1f} s, compile included)")

  macs, params = space.macs(pop), space.params(pop)
  rows = [{"arch": space.to_json(spaces.member(pop, i)), "summary": space.format(spaces.member(pop, i)),
           "macs": int(macs[i]), "params": int(params[i]), "val_top1": float(correct[i])}
          for i in range(len(res_idx))]
  results = {"config": cfg.to_dict(), "space": space.config(), "jax": jax.__version__,
             "backend": jax.default_backend(), "subnets": rows}
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
