#!/usr/bin/env python
"""Benchmark: scoring a population of subnets, masked+vmapped vs. exact shapes one by one.

Three ways to get the eval-mode logits of P subnets on the same image batch:

  masked, vmapped   one compiled call: the supernet with per-member masks, jax.vmap over archs
  masked, loop      one compiled single-subnet function, called P times from Python
  exact, loop       per member: extract exact shapes, compile, run (the floor a masked net pays
                    for its padding; every member needs its own compile)

Compile time and run time are reported separately; ratios are against the exact-shape run time
measured in the same process.  Example (the CPU figures in docs/benchmarks.md):

  python benchmarks/score_population.py --population 64 --stem small --resolution 32 --batch 64
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench_util import timed
from regnas_jax import spaces
from regnas_jax.nn import OFAMobileNetV3, extract
from regnas_jax.nn.common import init_variables


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--population", type=int, default=64)
  p.add_argument("--stem", choices=("small", "imagenet"), default="small")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=64, help="images per subnet")
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--chunk", type=int, nargs="+", default=[0, 8],
                 help="members per lax.map step of the vmapped call (0: all at once); one row each")
  p.add_argument("--depthwise", default="auto", choices=("auto", "xla", "shift"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--exact-members", type=int, default=None,
                 help="time the exact-shape loop on only this many members and extrapolate")
  p.add_argument("--json", default=None, help="also write the results to this file")
  a = p.parse_args(argv)

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[a.dtype]
  sp = spaces.OFAMobileNetV3Space(width_mult=a.width, stem=a.stem, num_classes=a.classes,
                                  resolutions=(a.resolution,))
  net = OFAMobileNetV3(sp, depthwise_impl=a.depthwise, dtype=dtype)
  variables = init_variables(net, jax.random.key(0))
  images = jax.random.normal(jax.random.key(1), (a.batch, a.resolution, a.resolution, 3))
  pop = sp.sample(jax.random.key(2), a.population)
  macs = sp.macs(jax.tree.map(np.asarray, pop))
  rows = []

  # masked, vmapped over the population (all at once, or lax.map over chunks of members)
  for chunk in a.chunk:
    def pop_fn(v, x, pop, chunk=chunk):
      one = lambda arch: net.apply(v, x, arch)
      return jax.vmap(one)(pop) if chunk == 0 else jax.lax.map(one, pop, batch_size=chunk)
    t = time.perf_counter()
    compiled = jax.jit(pop_fn).lower(variables, images, pop).compile()
    c_vm = time.perf_counter() - t
    r_vm = timed(lambda: compiled(variables, images, pop), a.repeats)
    rows.append((f"masked, vmapped{'' if chunk == 0 else f' in chunks of {chunk}'}", c_vm, r_vm))

  # masked, one member at a time through one compiled function
  single = jax.jit(lambda v, x, arch: net.apply(v, x, arch))
  t = time.perf_counter()
  single_c = single.lower(variables, images, spaces.member(pop, 0)).compile()
  c_loop = time.perf_counter() - t
  members = [spaces.member(pop, i) for i in range(a.population)]
  r_loop = timed(lambda: [single_c(variables, images, m) for m in members], a.repeats)
  rows.append(("masked, loop", c_loop, r_loop))

  # exact shapes, one member at a time (own compile each)
  n_exact = a.population if a.exact_members is None else min(a.exact_members, a.population)
  c_ex, r_ex = 0.0, 0.0
  for i in range(n_exact):
    module, sv = extract(net, variables, members[i])
    f = jax.jit(module.apply)
    t = time.perf_counter()
    fc = f.lower(sv, images).compile()
    c_ex += time.perf_counter() - t
    r_ex += timed(lambda: fc(sv, images), a.repeats)
  scale = a.population / n_exact
  rows.append((f"exact, loop{'' if scale == 1 else f' ({n_exact} timed, x{scale:.1f})'}",
               c_ex * scale, r_ex * scale))

  dev = jax.devices()[0]
  print(f"device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s); "
        f"jax {jax.__version__}; python {platform.python_version()}")
  print(f"population {a.population} OFA-MBv3 subnets (w{a.width}, {a.stem} stem, {a.resolution} px, "
        f"{a.dtype}, depthwise {a.depthwise}), {a.batch} images each; "
        f"mean {np.mean(macs) / 1e6:.1f} MMACs/image (min {macs.min() / 1e6:.1f}, max {macs.max() / 1e6:.1f})")
  print(f"command: python benchmarks/score_population.py {' '.join(sys.argv[1:] if argv is None else argv)}")
  print()
  print("| method | compile (s) | run, whole population (s) | subnets/s | run time vs exact |")
  print("|---|---:|---:|---:|---:|")
  for name, c, r in rows:
    print(f"| {name} | {c:.1f} | {r:.3f} | {a.population / r:.1f} | {r / rows[-1][2]:.2f}x |")
  if a.json:
    with open(a.json, "w") as fh:
      json.dump({"args": vars(a), "device": str(dev), "jax": jax.__version__,
                 "rows": [dict(method=n, compile_s=c, run_s=r) for n, c, r in rows]}, fh, indent=1)


if __name__ == "__main__":
  main()
