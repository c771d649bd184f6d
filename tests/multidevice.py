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


def run(case: str, devices: int, timeout: int = 900) -> dict:
  """Run ``case`` in a fresh interpreter with ``devices`` CPU devices; its JSON result."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
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
  """The digits smoke supernet trained 3 steps on meshes of 1, 2 and ``n`` devices (replicated
  parameters) and on ``n`` with FSDP-split parameters: final parameters and statistics."""
  from configs import digits_mbv3
  from regnas_jax import training
  from regnas_jax.jobs import build
  cfg = digits_mbv3.get_config("smoke")
  cfg.train.update(dict(steps=3, checkpoint_every=3, log_every=1, progress_every=100,
                        batch_size=16))
  space = build.build_space(cfg)
  net = build.build_supernet(cfg, space)
  ds = build.load_dataset(cfg, space)
  out, ref = {}, None
  for label, devs, mode in (("1", 1, "replicate"), ("2", 2, "replicate"),
                            (str(n), n, "replicate"), (f"{n}-fsdp", n, "fsdp")):
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


CASES = {"train": case_train, "tunas": case_tunas}


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  result = CASES[sys.argv[1]](int(sys.argv[2]))
  print(json.dumps(result))
