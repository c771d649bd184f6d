#!/usr/bin/env python
"""Do two code trees build the same supernets?  Variable trees and logits of every config setup.

A *setup* is one supernet a config in ``configs/`` builds: each config file with each variant
it knows (``get_config(None)`` and every variant named in the error it raises for an unknown
one, alone and in pairs), de-duplicated by the ``space`` and ``supernet`` sections.  Per setup
the dump holds

* the variable tree of ``init_variables(net, key(0))``: every leaf's path, shape and dtype, and
  two checksums of its values (sum, sum of squares), so the initialisation is compared too;
* logits (eval mode, and train mode with batch statistics) of a fixed arch set -- max, min and
  three seeded random archs, their resolution set to the space's smallest -- on two fixed
  random images at that resolution, in masked mode, in switch mode where the supernet has one,
  and with TuNAS's op averaging (every flag on) where it has that.

``dump`` runs in a subprocess whose ``sys.path`` and working directory start at ``--tree``, so
the tree's own ``regnas_jax`` and ``configs/`` are imported (an old checkout works as long as it
has the same public calls: ``jobs.build``, ``nn.init_variables``, ``model.apply``):

  python tools/equivalence.py dump --tree /path/to/checkout out.npz
  python tools/equivalence.py compare base.npz new.npz      # per-setup table; exit 1 on any
                                                           # difference

Logits are equal when ``|a - b| <= rtol * (|b| + max |b|)`` (``--rtol``, default 1e-5);
variable trees must have the same paths, shapes and dtypes and checksums within ``rtol``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

BATCH = 2
RANDOM_ARCHS = 3
# regnas_jax and jax are imported inside the functions that dump: only after the subprocess
# has put the dumped tree first on sys.path (and ``compare`` needs neither).


# ----------------------------------------------------------------------------------------------
# Setups (run inside the dumped tree)
# ----------------------------------------------------------------------------------------------
def _load_config_module(path: str):
  spec = importlib.util.spec_from_file_location(f"equiv_{os.path.basename(path)[:-3]}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def known_variants(get_config) -> list[str]:
  """The variant tokens a config's ``get_config`` names when given an unknown one."""
  try:
    get_config("__no_such_variant__")
  except ValueError as e:
    m = re.search(r"known: ([^)]*)\)", str(e))
    if m:
      return [t.strip() for t in m.group(1).split(",") if t.strip()]
  return []


def variant_args(tokens: list[str]) -> list[str | None]:
  """``None``, every token and every pair of tokens (comma-joined)."""
  pairs = [",".join(p) for p in itertools.combinations(tokens, 2)]
  return [None] + list(tokens) + pairs


def setup_key(cfg) -> str:
  """What makes a setup: the ``space`` and ``supernet`` sections (not the weights' source)."""
  sup = {k: v for k, v in cfg.supernet.to_dict().items() if k != "init_from"}
  return json.dumps([cfg.space.to_dict(), sup], sort_keys=True, default=str)


def setups(configs_dir: str) -> list[tuple[str, object, list]]:
  """``[(label, cfg, labels)]``: one config per distinct setup, labelled by the first
  ``file:variant`` that builds it (``labels``: all that do); variants a file refuses (e.g. two
  exclusive ones) are not setups."""
  found: dict[str, tuple[str, object, list]] = {}
  for path in sorted(glob.glob(os.path.join(configs_dir, "*.py"))):
    if os.path.basename(path).startswith("_"):
      continue
    get_config = _load_config_module(path).get_config
    name = os.path.basename(path)[:-3]
    for arg in variant_args(known_variants(get_config)):
      try:
        cfg = get_config(arg)
      except ValueError:
        continue
      label = f"{name}:{arg or ''}"
      found.setdefault(setup_key(cfg), (label, cfg, []))[2].append(label)
  return list(found.values())


# ----------------------------------------------------------------------------------------------
# One setup's dump
# ----------------------------------------------------------------------------------------------
def arch_set(space):
  """max, min and RANDOM_ARCHS seeded random archs, at the smallest resolution (a population)."""
  import jax
  from regnas_jax import spaces
  r_min = int(np.argmin(space.resolutions))
  rand = jax.tree.map(np.asarray, space.sample(jax.random.key(123), RANDOM_ARCHS))
  archs = [space.max_arch(), space.min_arch()] + [spaces.member(rand, i)
                                                  for i in range(RANDOM_ARCHS)]
  archs = [jax.tree.map(np.asarray, a)._replace(resolution=np.int32(r_min)) for a in archs]
  return spaces.stack(archs), int(space.resolutions[r_min])


def tree_listing(variables) -> list[list]:
  """``[[path, shape, dtype, sum, sum of squares]]`` per leaf."""
  import jax
  rows = []
  for path, x in jax.tree_util.tree_flatten_with_path(variables)[0]:
    a = np.asarray(x, np.float64)
    rows.append([jax.tree_util.keystr(path), list(x.shape), str(x.dtype), float(a.sum()),
                 float(np.square(a).sum())])
  return rows


def mode_logits(net, variables, images, pop, **kw) -> np.ndarray:
  """``(archs, 2, N, classes)``: eval and train logits of every arch (one compiled program;
  dropout, where the config has it, with a fixed key)."""
  import jax

  @jax.jit
  def run(v, x, a):
    ev = net.apply(v, x, a, train=False, **kw)
    tr = net.apply(v, x, a, train=True, mutable=["batch_stats"],
                   rngs={"dropout": jax.random.key(1)}, **kw)[0]
    return jax.numpy.stack([ev, tr])

  n = len(np.asarray(pop.resolution))
  return np.stack([np.asarray(run(variables, images, jax.tree.map(lambda f, i=i: f[i], pop)))
                   for i in range(n)])


def dump_setup(cfg) -> tuple[list, dict]:
  """``(tree listing, {mode: logits})`` of one config's supernet."""
  import jax
  from regnas_jax.jobs import build
  from regnas_jax.nn import init_variables
  space = build.build_space(cfg)
  net = build.build_supernet(cfg, space)
  pop, r = arch_set(space)
  variables = init_variables(net, jax.random.key(0), resolution=r)
  images = np.random.default_rng(0).normal(size=(BATCH, r, r, 3)).astype(np.float32)
  out = {"masked": mode_logits(net, variables, images, pop)}
  # getattr: a tree from before the supernet base class declares only the capabilities it has
  if getattr(net, "switches", False):
    out["switch"] = mode_logits(net.clone(switch=True), variables, images, pop)
  if getattr(net, "op_average", False):
    avg = {n: np.ones(space.field(n).shape, bool) for n in net.op_decisions}
    out["average"] = mode_logits(net, variables, images, pop, average=avg)
  return tree_listing(variables), out


def run_dump(out_path: str) -> None:
  """The dump of the tree this process imports (the working directory's)."""
  import regnas_jax
  tree = os.getcwd()
  src = os.path.dirname(os.path.abspath(regnas_jax.__file__))
  if not src.startswith(os.path.abspath(tree) + os.sep):
    sys.exit(f"equivalence: imported regnas_jax from {src}, not from the tree {tree}")
  arrays, meta = {}, {"tree": tree, "setups": []}
  for i, (label, cfg, labels) in enumerate(setups(os.path.join(tree, "configs"))):
    t = time.time()
    listing, logits = dump_setup(cfg)
    for mode, x in logits.items():
      arrays[f"{i}/{mode}"] = x
    meta["setups"].append({"label": label, "variants": labels, "vars": listing,
                           "modes": sorted(logits), "index": i})
    print(f"{label:40s} {len(listing):4d} leaves, modes {'/'.join(sorted(logits))}: "
          f"{time.time() - t:.1f} s", flush=True)
  np.savez(out_path, meta=np.asarray(json.dumps(meta)), **arrays)


def dump(tree: str, out_path: str) -> int:
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [os.path.abspath(tree)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                 if p]))
  return subprocess.call([sys.executable, os.path.abspath(__file__), "_dump",
                          os.path.abspath(out_path)], cwd=tree, env=env)


# ----------------------------------------------------------------------------------------------
# Compare
# ----------------------------------------------------------------------------------------------
def load(path: str) -> tuple[dict, dict]:
  z = np.load(path)
  meta = json.loads(str(z["meta"]))
  return meta, {k: z[k] for k in z.files if k != "meta"}


def close(a, b, rtol: float) -> tuple[bool, float]:
  """Equal within ``rtol`` of each element plus the largest magnitude; the largest relative
  difference (scaled by the largest magnitude)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    return False, float("inf")
  scale = max(np.abs(b).max(), 1e-12)
  ok = bool(np.all(np.abs(a - b) <= rtol * (np.abs(b) + scale)))
  return ok, float(np.abs(a - b).max() / scale)


def compare_vars(va: list, vb: list, rtol: float) -> str:
  """``'same'`` or what differs first."""
  if [r[:3] for r in va] != [r[:3] for r in vb]:
    pa, pb = {r[0]: r[1:3] for r in va}, {r[0]: r[1:3] for r in vb}
    diff = sorted(set(pa) ^ set(pb)) or [p for p in pa if pa[p] != pb[p]]
    return f"tree differs at {diff[0] if diff else 'leaf order'}"
  for ra, rb in zip(va, vb):
    if not close(ra[3:], rb[3:], rtol)[0]:
      return f"values differ at {ra[0]}"
  return "same"


def compare(path_a: str, path_b: str, rtol: float) -> int:
  (ma, xa), (mb, xb) = load(path_a), load(path_b)
  sa = {s["label"]: s for s in ma["setups"]}
  sb = {s["label"]: s for s in mb["setups"]}
  print(f"A: {path_a} ({ma['tree']})\nB: {path_b} ({mb['tree']})\n")
  head = f"| setup | leaves | variables | modes | max rel. diff | equal |"
  print(head + "\n|---|---:|---|---|---:|---|")
  bad = 0
  for label in sorted(set(sa) | set(sb)):
    if label not in sa or label not in sb:
      print(f"| {label} | | only in {'A' if label in sa else 'B'} | | | no |")
      bad += 1
      continue
    a, b = sa[label], sb[label]
    vres = compare_vars(a["vars"], b["vars"], rtol)
    diffs, ok = [], vres == "same" and a["modes"] == b["modes"]
    for mode in a["modes"]:
      if mode in b["modes"]:
        good, d = close(xa[f"{a['index']}/{mode}"], xb[f"{b['index']}/{mode}"], rtol)
        ok, diffs = ok and good, diffs + [d]
    modes = "/".join(a["modes"]) + ("" if a["modes"] == b["modes"] else f" vs {'/'.join(b['modes'])}")
    print(f"| {label} ({len(a['variants'])} variant(s)) | {len(a['vars'])} | {vres} | {modes} | "
          f"{max(diffs, default=0):.1e} | {'yes' if ok else 'NO'} |")
    bad += not ok
  print(f"\n{len(set(sa) | set(sb))} setups, {bad} different (rtol {rtol:g})")
  for label in sorted(sa):
    print(f"  {label}: {', '.join(sa[label]['variants'])}")
  return 1 if bad else 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="cmd", required=True)
  d = sub.add_parser("dump", help="dump the setups of a code tree")
  d.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  d.add_argument("out")
  c = sub.add_parser("compare", help="compare two dumps")
  c.add_argument("a")
  c.add_argument("b")
  c.add_argument("--rtol", type=float, default=1e-5)
  i = sub.add_parser("_dump")
  i.add_argument("out")
  args = p.parse_args(argv)
  if args.cmd == "dump":
    return dump(args.tree, args.out)
  if args.cmd == "compare":
    return compare(args.a, args.b, args.rtol)
  run_dump(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
