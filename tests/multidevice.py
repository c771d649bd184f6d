"""Runs in a subprocess with simulated CPU devices (``python tests/multidevice.py CASE N``).

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be set before JAX is imported, which a
pytest worker has long done; :func:`run` starts this file with it set and reads the JSON line it
prints.  Each case compares what runs on a mesh with the same computation on one device, in the
same process, and prints the largest differences (the test decides what is close enough).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(case: str, devices: int, timeout: int = 900, inherit_flags: bool = False) -> dict:
  """Run ``case`` in a fresh interpreter with ``devices`` CPU devices; its JSON result
  (``'a,b'``: several cases in one interpreter, ``{case: result}``).
  ``inherit_flags``: keep this process's other ``XLA_FLAGS`` (the suite's faster compile)."""
  flags = os.environ.get("XLA_FLAGS", "") if inherit_flags else ""
  flags = " ".join([f for f in flags.split() if "device_count" not in f]
                   + [f"--xla_force_host_platform_device_count={devices}"])
  env = dict(os.environ, XLA_FLAGS=flags,
             JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, env_path()]))
  p = subprocess.run([sys.executable, __file__, case, str(devices)], env=env, cwd=ROOT,
                     capture_output=True, text=True, timeout=timeout)
  if p.returncode != 0:
    raise AssertionError(f"{case} on {devices} devices failed:\n{p.stderr[-3000:]}")
  return json.loads(p.stdout.strip().splitlines()[-1])


def env_path() -> str:
  return os.environ.get("PYTHONPATH", "")


def _max_diff(a, b) -> float:
  import jax
  import numpy as np
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             if np.size(x) else 0.0 for x, y in zip(la, lb))


def _max_rel(a, b) -> float:
  import jax
  import numpy as np
  out = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size:
      out = max(out, float(np.max(np.abs(x - y) / (np.abs(y) + 1e-3))))
  return out


def case_train(n: int) -> dict:
  """The digits smoke supernet trained 3 steps on meshes of 1 and ``n`` devices (replicated
  parameters) and on ``n`` with FSDP-split parameters: final parameters and statistics.  (A
  2-device mesh runs the same program as ``n``; the TuNAS case trains on one.)"""
  from configs import digits_mbv3
  from regnas_jax import training
  from regnas_jax.jobs import build
  cfg = digits_mbv3.get_config("smoke")
  cfg.train.update(dict(steps=3, checkpoint_every=3, log_every=1, progress_every=100,
                        batch_size=16))
  # one block per stage and two kernel sizes: every elastic dimension, a third of the compiles
  cfg.space.update(dict(depth_choices=(1,), kernel_choices=(3, 5)))
  space = build.build_space(cfg)
  net = build.build_supernet(cfg, space)
  ds = build.load_dataset(cfg, space)
  out, ref = {}, None
  for label, devs, mode in (("1", 1, "replicate"), (str(n), n, "replicate"),
                            (f"{n}-fsdp", n, "fsdp")):
    cfg.mesh.update(dict(devices=devs, params=mode, fsdp_min_size=64))
    with tempfile.TemporaryDirectory() as wd:
      r = training.train(cfg, net, space, ds, wd, log=lambda m: None)
    v = r.variables
    if ref is None:
      ref = v
      continue
    out[label] = {"params_abs": _max_diff(v["params"], ref["params"]),
                  "params_rel": _max_rel(v["params"], ref["params"]),
                  "stats_rel": _max_rel(v["batch_stats"], ref["batch_stats"])}
    if mode == "fsdp":
      import jax
      out[label]["split_leaves"] = sum(
          1 for x in jax.tree.leaves(v["params"]) if not x.sharding.is_fully_replicated)
  return out


def case_tunas(n: int) -> dict:
  """The digits TuNAS smoke search with 2 sampled architectures per step: ``search.shards=2`` on
  one device, and ``shards=0`` (one per device) on a mesh of 2, each device running its shard:
  the final weights, BN statistics, policy logits and reward baseline."""
  import importlib.util
  import jax
  import numpy as np
  from regnas_jax import checkpoint as ckpt_lib, jobs
  spec = importlib.util.spec_from_file_location("digits_tunas",
                                                os.path.join(ROOT, "configs", "digits_tunas.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  out, ref = {}, None
  for label, devs, shards in (("1x2", 1, 2), ("2x0", 2, 0)):
    cfg = mod.get_config("smoke")
    # Two steps (the policy learns in the second): Q is a count of right answers of a nearly
    # untrained net, so a float-rounding difference can flip one near-tie prediction, and the
    # discrete reward then sends the two searches apart; two steps stay clear of that here.
    cfg.train.update(dict(steps=2, checkpoint_every=2))
    cfg.search.update(dict(shards=shards))
    cfg.mesh.update(dict(devices=devs))
    with tempfile.TemporaryDirectory() as wd:
      jobs.run(cfg, wd, "train")
      ck = ckpt_lib.Checkpointer(os.path.join(wd, "checkpoints"), {})
      st = ck.restore_arrays()
      ck.close()
    if ref is None:
      ref = st
      continue
    out[label] = {"params_abs": _max_diff(st["params"], ref["params"]),
                  "stats_rel": _max_rel(st["batch_stats"], ref["batch_stats"]),
                  "logits_abs": _max_diff(st["ctrl"]["logits"], ref["ctrl"]["logits"]),
                  "baseline_abs": _max_diff(st["ctrl"]["baseline_num"],
                                            ref["ctrl"]["baseline_num"]),
                  # how far the valid logits moved from their initial 0 (the test needs > 0)
                  "policy_moved": max(float(np.max(np.abs(np.where(np.abs(v) < 1e8, v, 0))))
                                      for v in jax.tree.leaves(st["ctrl"]["logits"]))}
  return out



def _allclose_ratio(a, b, rtol: float = 1e-5, atol: float = 1e-5) -> float:
  """max |a - b| / (atol + rtol |b|) over the leaves: <= 1 where ``np.allclose`` holds."""
  import jax
  import numpy as np
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
                          / (atol + rtol * np.abs(np.asarray(y, np.float64)))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)) if np.size(x))


def case_score(n: int) -> dict:
  """Population scoring of a tiny supernet (OFA-MBv3 width 0.5, 12 px, depth 1-2; 8 members,
  calibration 2 x 16 images, 20 evaluation images) on meshes against one device: members split
  (block 8 on ``n`` devices; block 8 in chunks of 2 on 2 devices), images split (block 2 on ``n``
  devices, evaluation batches of 12 padded to 16), and the Scorer on ``n`` devices (block 8).
  Per layout: how close the re-calibrated statistics are (:func:`_allclose_ratio`), how many
  predictions differ from one device's, and where the statistics and calibration batches lived.
  (The inputs are fixed; one device's top two logits were at least 1e-4 apart for every one of
  the 160 predictions when this was written, far above the float32 differences of a split run,
  so equal predictions are expected, not lucky.)"""
  import jax
  import ml_collections
  import numpy as np

  from regnas_jax import data, evaluate, parallel
  from regnas_jax.nn import OFAMobileNetV3
  from regnas_jax.nn.common import init_variables
  from regnas_jax.spaces import OFAMobileNetV3Space
  sp = OFAMobileNetV3Space(width_mult=0.5, stem="small", num_classes=10, resolutions=(12,),
                           depth_choices=(1, 2))
  net = OFAMobileNetV3(sp)
  v = init_variables(net, jax.random.key(0))
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(2), 8))
  calib = np.asarray(jax.random.normal(jax.random.key(1), (2, 16, 12, 12, 3)))
  x = np.asarray(jax.random.normal(jax.random.key(3), (20, 12, 12, 3)))

  st0 = evaluate.recalibrate_population(net, v, calib, pop, block_size=8)
  pred0 = evaluate.population_predictions(net, v["params"], st0, pop, x, block_size=8,
                                          batch_size=16)
  out = {}
  for label, devs, block_size, chunk_size, batch_size in (
      (f"{n}-members", n, 8, None, 16), ("2-members-chunked", 2, 8, 2, 16),
      (f"{n}-images", n, 2, None, 12)):
    mesh = parallel.make_mesh(parallel.MeshConfig(devices=devs))
    st = evaluate.recalibrate_population(net, v, calib, pop, block_size=block_size,
                                         chunk_size=chunk_size, mesh=mesh)
    pred = evaluate.population_predictions(net, v["params"], st, pop, x, block_size=block_size,
                                           chunk_size=chunk_size, batch_size=batch_size,
                                           mesh=mesh)
    lay = evaluate.layout(mesh, 8, block_size)
    placed = lay.calib(calib)   # the call recalibrate_population made for its first block:
    raw = evaluate.recalibrate_bn(net, lay.shared(v), placed, lay.members(
        jax.tree.map(lambda a: a[:lay.block], pop)), chunk_size=chunk_size, **lay.kw)
    out[label] = {"stats": _allclose_ratio(st, st0), "pred_diff": int(np.sum(pred != pred0)),
                  "over": lay.over, "calib_spec": str(placed.sharding.spec),
                  "stats_spec": str(jax.tree.leaves(raw)[0].sharding.spec)}

  rng = np.random.default_rng(0)
  split = data.ArraySource(rng.integers(0, 256, (40, 12, 12, 3), np.uint8),
                           rng.integers(0, 10, 40).astype(np.int32))
  ds = data.Dataset("random", split, split, split, num_classes=10, image_size=12,
                    mean=(0.5,) * 3, std=(0.25,) * 3)
  score = ml_collections.ConfigDict(dict(block_size=8, chunk_size=None, batch_size=16,
                                         max_images=0))
  kw = dict(calib_images=32, calib_batch_size=16, seed=0)
  one = evaluate.Scorer(net, sp, v, ds, score, **kw)
  many = evaluate.Scorer(net, sp, v, ds, score, mesh=parallel.make_mesh(), **kw)
  out["scorer"] = {"correct_equal": bool(np.array_equal(many.correct(pop, "test"),
                                                        one.correct(pop, "test"))),
                   "over": evaluate.layout(many.mesh, 8, score.block_size).over}
  return out


CASES = {"train": case_train, "score": case_score, "tunas": case_tunas}


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  names = sys.argv[1].split(",")
  results = {c: CASES[c](int(sys.argv[2])) for c in names}
  print(json.dumps(results if len(names) > 1 else results[names[0]]))
