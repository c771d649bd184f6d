#!/usr/bin/env python
"""Benchmark: one multi-subnet training step vs. the same work done subnet by subnet, exact shapes.

The sandwich step (``regnas_jax.training.make_train_step``): per step the largest, the smallest and
``S - 2`` random subnets of the masked supernet, in-place distillation from the largest, one
optimiser update on the summed gradients.  Rows:

  masked sandwich step, vmap   the S subnets vmapped in one compiled step (accelerators)
  masked sandwich step, scan   the S subnets one after another inside one compiled step (CPU)
  switch sandwich step, scan   the scan step with ``model.clone(switch=True)``: each block runs
                               only its chosen (kernel, expand) branch at exact shapes
  exact shapes, one by one     forward + backward of each of the same S subnets extracted to
                               exact shapes (each compiled once beforehand; the optimiser update
                               and scattering gradients back into the supernet are not counted,
                               so this is a floor for a subnet-by-subnet loop)

Images/s counts each input image once per step (a batch of B images trains S subnets).  Ratios
are against the exact-shape row measured in the same process.  Compile time is reported apart.

  python benchmarks/train_throughput.py                                   # CPU-sized default
  python benchmarks/train_throughput.py --stem imagenet --resolution 32 --batch 256 --loops vmap
  python benchmarks/train_throughput.py --space ofa_resnet50 --width 0.25 --resolution 16
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench_util import build_net, describe_depthwise, timed
from regnas_jax import spaces
from regnas_jax import training as train
from regnas_jax.defaults import train_defaults
from regnas_jax.nn.common import init_variables


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--space", choices=sorted(spaces.SPACES), default="ofa_mbv3")
  p.add_argument("--stem", choices=("small", "imagenet"), default="small")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--subnets", type=int, default=4)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--loops", nargs="+", default=["scan", "vmap"], choices=("scan", "vmap"))
  p.add_argument("--depthwise", default="auto", choices=("auto", "xla", "shift"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=3, help="timed steps (median)")
  p.add_argument("--switch", action=argparse.BooleanOptionalAction, default=True,
                 help="also time the scan step in switch mode (supernets with switches: each "
                      "block runs only its chosen branch)")
  a = p.parse_args(argv)

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[a.dtype]
  sp, net = build_net(a, dtype)
  v = init_variables(net, jax.random.key(0))
  tc = train_defaults()
  tc.num_subnets = a.subnets
  (phase,) = train.build_phases(tc, sp)
  tx, _ = train.make_optimizer(tc, phase)
  lc = train.LossConfig(a.classes, 0.1, phase.distill, 1.0, True)
  images = jax.random.normal(jax.random.key(1), (a.batch, a.resolution, a.resolution, 3))
  labels = jax.random.randint(jax.random.key(2), (a.batch,), 0, a.classes)
  key = jax.random.key(3)
  rows = []

  def fresh():  # copies: the step donates its state
    p_, s_ = jax.tree.map(jnp.copy, (v["params"], v["batch_stats"]))
    return train.TrainState(jnp.zeros((), jnp.int32), p_, s_, tx.init(p_), None)

  runs = [(net, loop, f"masked sandwich step, {loop}") for loop in a.loops]
  if a.switch and net.switches and "scan" in a.loops:
    runs.append((net.clone(switch=True), "scan", "switch sandwich step, scan"))
  for model, loop, name in runs:
    step = train.make_train_step(model, sp, tx, phase, lc, loop)
    state = fresh()
    t = time.perf_counter()
    compiled = step.lower(state, images, labels, key).compile()
    comp = time.perf_counter() - t
    state, _ = compiled(state, images, labels, key)   # warm-up
    holder = [state]

    def run(compiled=compiled, holder=holder):
      holder[0], m = compiled(holder[0], images, labels, key)
      return m["loss"]

    rows.append((name, comp, timed(run, a.steps)))

  # The same S subnets the first masked step trains, extracted to exact shapes.
  archs = train.sample_subnets(sp, phase, jax.random.split(jax.random.fold_in(key, 0), 3)[1])
  comp, run_s = 0.0, 0.0
  teacher = None
  for i in range(a.subnets):
    module, sv = net.extract(v, spaces.member(archs, i))

    def loss_fn(params, soft, module=module, sv=sv):
      logits, _ = module.apply({"params": params, "batch_stats": sv["batch_stats"]}, images,
                               train=True, mutable=["batch_stats"])
      logp = jax.nn.log_softmax(logits.astype(jnp.float32))
      y = optax.smooth_labels(jax.nn.one_hot(labels, a.classes), 0.1)
      ce = -(y * logp).sum(-1).mean()
      kd = -(soft * logp).sum(-1).mean() if soft is not None else 0.0
      return ce + kd, logits

    g = jax.jit(jax.grad(loss_fn, has_aux=True))
    t = time.perf_counter()
    gc = g.lower(sv["params"], teacher).compile()
    comp += time.perf_counter() - t
    run_s += timed(functools.partial(gc, sv["params"], teacher), a.steps)
    if teacher is None:
      teacher = jax.nn.softmax(gc(sv["params"], None)[1].astype(jnp.float32))
  rows.append(("exact shapes, one by one", comp, run_s))

  dev = jax.devices()[0]
  macs = sp.macs(jax.tree.map(np.asarray, archs))
  print(f"device: {dev.platform} ({dev.device_kind}); jax {jax.__version__}; "
        f"python {platform.python_version()}")
  print(f"{sp.name} w{a.width}, {a.stem} stem, {a.resolution} px, {a.classes} classes, {a.dtype}"
        f"{describe_depthwise(a)}; batch {a.batch}, {a.subnets} subnets per step (max, min, "
        f"{a.subnets - 2} random; in-place distillation); subnet MMACs/image "
        f"{', '.join(f'{m / 1e6:.1f}' for m in macs)}")
  print(f"command: python benchmarks/train_throughput.py "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}")
  print()
  print("| method | compile (s) | step (s) | images/s | step time vs exact |")
  print("|---|---:|---:|---:|---:|")
  for name, c, r in rows:
    print(f"| {name} | {c:.1f} | {r:.4f} | {a.batch / r:.0f} | {r / rows[-1][2]:.2f}x |")


if __name__ == "__main__":
  main()
