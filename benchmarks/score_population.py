#!/usr/bin/env python
"""Benchmark: scoring a population of subnets, masked supernet in blocks vs. exact shapes one by one.

``--mode score`` (default) times *full subnet scoring*, what the search does for every candidate:
per-member BN re-calibration on C calibration images (in batches of ``--calib-batch``), then
eval-mode predictions on E evaluation images.  Two methods:

  masked, blocked       ``evaluate.recalibrate_population`` + ``evaluate.population_predictions``
                        over the whole population, ``--block`` members per compiled call and
                        ``--chunk`` members per ``lax.map`` step inside it (0: vmap the whole
                        block), evaluation images ``--batch`` at a time.  Images are put on the
                        device once, as the search pipeline's scorer does.
                        One row per ``--chunk`` value.
  switch, blocked       the same calls with ``model.clone(switch=True)`` and one member at a
                        time (``chunk_size`` 1): each block runs only its chosen branch, at
                        exact shapes (supernets with a switch mode; ``--no-switch``: no row).
  exact, one by one     per member: ``extract`` the exact-shape module with the supernet's
                        variables, and in one jitted function re-calibrate its BN (average of the
                        per-batch means / biased variances, as ``recalibrate_bn``) and predict
                        the E images (``--batch`` at a time); inputs already on the device.
                        Every member compiles once: the floor a masked net pays for its padding.

Compiles are counted with ``jax.monitoring`` (backend-compile events) and their durations summed;
"first pass" is the wall time of the first full pass (tracing + compile + run), "run" is the
steady-state wall time of a second pass; subnets/s and the per-member cost ratio use the steady
run.  ``--exact-members K`` times the exact path on the first K members and extrapolates; every
method's predictions are compared with it on those K members (random weights and images: speed
only).  ``--archs N`` also scores N distinct random archs end to end (new random populations,
compiles included) with every method but exact, whose end-to-end time is extrapolated from its
first pass.

``--mode logits`` keeps the older, cheaper comparison: eval-mode logits of the population on one
batch of ``--batch`` images with the supernet's own BN statistics (masked vmapped / masked loop /
exact loop).

  python benchmarks/score_population.py --population 16 --calib 400 --eval 500 --block 8 \\
      --chunk 1 --stem small --resolution 32 --width 0.5 --exact-members 4
  python benchmarks/score_population.py --mode logits --population 64 --chunk 8 1
  python benchmarks/score_population.py --space ofa_resnet50 --width 0.25 --population 16 ...
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import monitoring

from bench_util import build_net, describe_depthwise, timed
from regnas_jax import evaluate, spaces
from regnas_jax.nn.common import init_variables


class CompileLog:
  """Backend compiles seen by ``jax.monitoring`` (event ``/jax/core/compile/backend_compile_duration``)."""

  def __init__(self):
    self.durations = []
    monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    if "backend_compile" in event:
      self.durations.append(duration)

  def mark(self) -> int:
    return len(self.durations)

  def since(self, mark: int) -> tuple[int, float]:
    d = self.durations[mark:]
    return len(d), float(sum(d))


def end_to_end(archs: int, sp, n: int, first_s: float, first_compiles: int, score, log) -> dict:
  """A search's scoring end to end: ``archs`` distinct random archs, the first population
  (already timed: ``first_s``, ``first_compiles``) then new random populations of ``n`` through
  ``score(pop)``, compiles included."""
  m = log.mark()
  t = time.perf_counter()
  done, g = n, 0
  while done < archs:
    g += 1
    score(jax.tree.map(np.asarray, sp.sample(jax.random.key(100 + g), n)))
    done += n
  return dict(archs=done, seconds=first_s + time.perf_counter() - t,
              compiles=first_compiles + log.since(m)[0])


# -- score mode ----------------------------------------------------------------------------------
def exact_scorer(module, num_eval: int):
  """Jitted ``(variables, calib (K,B,R,R,3), eval batches (M,b,R,R,3)) -> int32 (num_eval,)``
  predictions of one exact-shape subnet after re-calibrating its BN on the calibration batches."""
  frozen = module.clone(bn_momentum=0.0, dropout_rate=0.0)  # running stats := batch stats

  def f(sv, calib, eval_batches):
    params, stats = sv["params"], sv["batch_stats"]

    def body(acc, x):
      _, upd = frozen.apply({"params": params, "batch_stats": stats}, x, train=True,
                            mutable=["batch_stats"])
      return jax.tree.map(jnp.add, acc, upd["batch_stats"]), None

    total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, stats), calib)
    v = {"params": params, "batch_stats": jax.tree.map(lambda t: t / calib.shape[0], total)}
    pred = jax.lax.map(lambda x: jnp.argmax(module.apply(v, x, train=False), -1).astype(jnp.int32),
                       eval_batches)
    return pred.reshape(-1)[:num_eval]

  return jax.jit(f)


def run_score(a, net, variables, sp, log):
  rng = np.random.default_rng(1)
  r = a.resolution
  cb = min(a.calib_batch, a.calib)
  k = a.calib // cb
  calib = rng.standard_normal((k, cb, r, r, 3), dtype=np.float32)
  evals = rng.standard_normal((a.eval, r, r, 3), dtype=np.float32)
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(2), a.population))
  calib_dev, evals_dev = jax.device_put(calib), jax.device_put(evals)  # once, as the pipeline
  n = a.population
  rows, extra = [], {}

  # masked supernet, whole population in blocks (what the search runs); then the same in
  # switch mode (one member at a time, each block running only its chosen branch)
  masked_preds = {}
  runs = [(net, chunk, "masked") for chunk in a.chunk]
  if a.switch and net.switches:
    runs.append((net.clone(switch=True), 1, "switch"))
  for model, chunk, kind in runs:
    cs = None if chunk == 0 else chunk

    def full_pass(p=pop, cs=cs, model=model):
      t0 = time.perf_counter()
      st = evaluate.recalibrate_population(model, variables, calib_dev, p, block_size=a.block,
                                           chunk_size=cs)
      t1 = time.perf_counter()
      pred = evaluate.population_predictions(model, variables["params"], st, p, evals_dev,
                                             block_size=a.block, chunk_size=cs,
                                             batch_size=a.batch)
      return pred, t1 - t0, time.perf_counter() - t1

    m = log.mark()
    _, f_rc, f_pr = full_pass()
    n_c, s_c = log.since(m)
    m = log.mark()
    pred, r_rc, r_pr = full_pass()
    n_c2, _ = log.since(m)
    name = f"{kind}, blocked (block {a.block}, {'vmap' if chunk == 0 else f'chunk {chunk}'})"
    masked_preds[chunk if kind == "masked" else kind] = pred
    if a.archs:
      extra.setdefault("archs", {})[name] = end_to_end(a.archs, sp, n, f_rc + f_pr, n_c,
                                                       full_pass, log)
    rows.append(dict(method=name, compiles=n_c, compile_s=s_c, first_s=f_rc + f_pr,
                     run_s=r_rc + r_pr, per_member_s=(r_rc + r_pr) / n,
                     recal_s=r_rc, predict_s=r_pr, recompiles_steady=n_c2))

  # exact shapes, one member at a time (own compile each)
  k_ex = n if a.exact_members is None else min(a.exact_members, n)
  if k_ex > 0:
    b = min(a.batch, a.eval)
    nb = -(-a.eval // b)
    pad = np.zeros((nb * b - a.eval, r, r, 3), np.float32)
    eval_d = jax.device_put(np.concatenate([evals, pad]).reshape(nb, b, r, r, 3))
    calib_d = jax.device_put(calib)
    t_ext = s_c = t_first = t_run = 0.0
    n_ext_c = n_c = 0
    ex_preds = []
    for i in range(k_ex):
      m = log.mark()
      t = time.perf_counter()
      module, sv = net.extract(variables, spaces.member(pop, i))
      sv = jax.block_until_ready(jax.device_put(sv))
      t_ext += time.perf_counter() - t
      n_ext_c += log.since(m)[0]
      m = log.mark()
      t = time.perf_counter()
      fc = exact_scorer(module, a.eval).lower(sv, calib_d, eval_d).compile()
      t_lc = time.perf_counter() - t
      c, s = log.since(m)
      n_c, s_c = n_c + c, s_c + s
      t = time.perf_counter()
      jax.block_until_ready(fc(sv, calib_d, eval_d))
      t_first += t_lc + time.perf_counter() - t
      t = time.perf_counter()
      p = jax.block_until_ready(fc(sv, calib_d, eval_d))
      t_run += time.perf_counter() - t
      ex_preds.append(np.asarray(p))
    scale = n / k_ex
    name = "exact, one by one" + ("" if k_ex == n else f" ({k_ex} of {n} timed, x{scale:.1f})")
    rows.append(dict(method=name, compiles=n_c * scale, compile_s=s_c * scale,
                     first_s=(t_first + t_ext) * scale, run_s=t_run * scale,
                     per_member_s=t_run / k_ex))
    extra["exact_extract_s_per_member"] = t_ext / k_ex
    extra["exact_extract_eager_compiles"] = n_ext_c
    ex = np.stack(ex_preds)
    extra["agreement"] = {}
    for chunk, pred in masked_preds.items():
      same = int((pred[:k_ex] == ex).sum())
      extra["agreement"][chunk] = dict(same=same, total=int(ex.size))

  macs = sp.macs(pop)
  head = [f"score {n} random {sp.name} subnets (w{a.width}, {a.stem} stem, {r} px, {a.classes} classes, "
          f"{a.dtype}{describe_depthwise(a)}); per member: BN re-calibration on {k * cb} images "
          f"({k} x {cb}) + predictions on {a.eval} images ({a.batch} per call); "
          f"mean {np.mean(macs) / 1e6:.1f} MMACs/image (min {macs.min() / 1e6:.1f}, "
          f"max {macs.max() / 1e6:.1f})"]
  floor = rows[-1]["per_member_s"] if k_ex > 0 else None
  table = ["| method | compiles | compile s | first pass s | run s (steady, whole population) "
           "| subnets/s | per-member cost vs exact |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    ratio = f"{row['per_member_s'] / floor:.2f}x" if floor else "n/a"
    table.append(f"| {row['method']} | {row['compiles']:.0f} | {row['compile_s']:.1f} | "
                 f"{row['first_s']:.1f} | {row['run_s']:.2f} | {n / row['run_s']:.2f} | {ratio} |")
  notes = []
  for row in rows:
    if "recal_s" in row:
      notes.append(f"{row['method']}: steady run = {row['recal_s']:.2f} s re-calibration + "
                   f"{row['predict_s']:.2f} s predictions; compiles in the steady pass: "
                   f"{row['recompiles_steady']}")
  if k_ex > 0:
    notes.append(f"exact: compile s and first pass are extrapolated from {k_ex} member(s); "
                 f"extract {extra['exact_extract_s_per_member']:.2f} s/member "
                 f"(in first pass only, {extra['exact_extract_eager_compiles']} eager-op compiles)")
  for method, e2e in extra.get("archs", {}).items():
    line = (f"end to end, {e2e['archs']} distinct random archs in populations of {n}: {method} "
            f"{e2e['seconds']:.0f} s measured, {e2e['compiles']} compiles")
    if k_ex > 0:
      line += f"; exact {e2e['archs'] / n * rows[-1]['first_s']:.0f} s (first pass per member x {e2e['archs']})"
    notes.append(line)
  ok = True
  for chunk, ag in extra.get("agreement", {}).items():
    frac = 1 - ag["same"] / ag["total"]
    label = chunk if isinstance(chunk, str) else f"masked ({'vmap' if chunk == 0 else f'chunk {chunk}'})"
    notes.append(f"agreement, {label} vs exact on "
                 f"{k_ex} member(s): {ag['same']}/{ag['total']} predictions equal "
                 f"({100 * (1 - frac):.2f}%)")
    ok &= frac <= a.max_mismatch
  return head, table, notes, dict(rows=rows, **extra), ok


# -- logits mode (the older, cheaper comparison) --------------------------------------------------
def run_logits(a, net, variables, sp, log):
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
  n_exact = a.population if a.exact_members is None else min(max(a.exact_members, 1), a.population)
  c_ex, r_ex = 0.0, 0.0
  for i in range(n_exact):
    module, sv = net.extract(variables, members[i])
    f = jax.jit(module.apply)
    t = time.perf_counter()
    fc = f.lower(sv, images).compile()
    c_ex += time.perf_counter() - t
    r_ex += timed(lambda: fc(sv, images), a.repeats)
  scale = a.population / n_exact
  rows.append((f"exact, loop{'' if scale == 1 else f' ({n_exact} timed, x{scale:.1f})'}",
               c_ex * scale, r_ex * scale))

  head = [f"population {a.population} {sp.name} subnets (w{a.width}, {a.stem} stem, {a.resolution} px, "
          f"{a.dtype}{describe_depthwise(a)}), {a.batch} images each, supernet BN statistics; "
          f"mean {np.mean(macs) / 1e6:.1f} MMACs/image (min {macs.min() / 1e6:.1f}, max {macs.max() / 1e6:.1f})"]
  table = ["| method | compile (s) | run, whole population (s) | subnets/s | run time vs exact |",
           "|---|---:|---:|---:|---:|"]
  for name, c, r in rows:
    table.append(f"| {name} | {c:.1f} | {r:.3f} | {a.population / r:.1f} | {r / rows[-1][2]:.2f}x |")
  return head, table, [], dict(rows=[dict(method=n, compile_s=c, run_s=r) for n, c, r in rows]), True


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--mode", choices=("score", "logits"), default="score",
                 help="score: BN re-calibration + predictions per member; logits: logits only")
  p.add_argument("--space", choices=sorted(spaces.SPACES), default="ofa_mbv3")
  p.add_argument("--population", type=int, default=64)
  p.add_argument("--stem", choices=("small", "imagenet"), default="small")
  p.add_argument("--resolution", type=int, default=32)
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--calib", type=int, default=2000, help="calibration images per member (score)")
  p.add_argument("--calib-batch", type=int, default=200, help="calibration batch size (score)")
  p.add_argument("--eval", type=int, default=10000, help="evaluation images per member (score)")
  p.add_argument("--batch", type=int, default=None,
                 help="images per compiled call: evaluation batch (score, default 500) or the "
                      "one batch per subnet (logits, default 64)")
  p.add_argument("--block", type=int, default=8, help="members per compiled call (score)")
  p.add_argument("--chunk", type=int, nargs="+", default=None,
                 help="members per lax.map step (0: vmap them all); one row each "
                      "(default: 1 for score, 0 8 for logits)")
  p.add_argument("--depthwise", default="auto", choices=("auto", "xla", "shift"))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--repeats", type=int, default=3, help="timing repeats (logits)")
  p.add_argument("--exact-members", type=int, default=None,
                 help="time the exact-shape path on only this many members and extrapolate "
                      "(score: 0 skips it)")
  p.add_argument("--max-mismatch", type=float, default=0.01,
                 help="largest allowed fraction of differing predictions, masked vs exact (score)")
  p.add_argument("--switch", action=argparse.BooleanOptionalAction, default=True,
                 help="also time switch mode (supernets with switches: one member at a time, "
                      "each block runs only its chosen branch)")
  p.add_argument("--archs", type=int, default=0,
                 help="score: also time scoring this many distinct random archs end to end "
                      "(compiles included) with every method but exact (extrapolated from its "
                      "first pass)")
  p.add_argument("--json", default=None, help="also write the results to this file")
  a = p.parse_args(argv)
  if a.batch is None:
    a.batch = 500 if a.mode == "score" else 64
  if a.chunk is None:
    a.chunk = [1] if a.mode == "score" else [0, 8]

  log = CompileLog()
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[a.dtype]
  sp, net = build_net(a, dtype)
  variables = init_variables(net, jax.random.key(0))
  head, table, notes, result, ok = (run_score if a.mode == "score" else run_logits)(
      a, net, variables, sp, log)

  dev = jax.devices()[0]
  cmd = "python benchmarks/score_population.py " + " ".join(sys.argv[1:] if argv is None else argv)
  env = {k: os.environ[k] for k in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR") if k in os.environ}
  print(f"device: {dev.platform} ({dev.device_kind}), {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPU cores; jax {jax.__version__}, flax {flax.__version__}; "
        f"python {platform.python_version()}" + (f"; env {env}" if env else ""))
  print(f"command: {cmd}")
  for line in head:
    print(line)
  print()
  print("\n".join(table))
  if notes:
    print()
    for line in notes:
      print(f"- {line}")
  if a.json:
    with open(a.json, "w") as fh:
      json.dump({"args": vars(a), "command": cmd, "device": str(dev), "jax": jax.__version__,
                 "flax": flax.__version__, **result}, fh, indent=1, default=str)
  if not ok:
    raise SystemExit(f"masked and exact predictions differ on more than "
                     f"{100 * a.max_mismatch:g}% of the compared predictions")


if __name__ == "__main__":
  main()
