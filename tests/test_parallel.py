"""Meshes: config.mesh checks, layouts, sharded training, scoring and TuNAS shards against one
device; two processes joined with jax.distributed against one process.

The multi-device cases run in a subprocess with 8 simulated CPU devices (``tests/multidevice.py``):
JAX fixes its device count when it is first imported.  The two-process case starts the command
line three times (two joined processes and the one-process reference) and compares work dirs.
"""

import functools
import json
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import multidevice
from regnas_jax import export, parallel
from regnas_jax.defaults import mesh_defaults
from regnas_jax.errors import ConfigError


@functools.lru_cache(maxsize=None)
def on_8_devices() -> dict:
  """Every multi-device case in one subprocess with 8 simulated devices (each interpreter start
  and import costs ~15 s; this file runs in one pytest worker), the suite's compile flags kept."""
  return multidevice.run("train,score,tunas", 8, timeout=1500, inherit_flags=True)


def _cfg(**mesh):
  c = ml_collections.ConfigDict()
  c.mesh = mesh_defaults()
  c.mesh.update(mesh)
  return c


def test_mesh_config_defaults_and_errors():
  assert parallel.mesh_config(ml_collections.ConfigDict()) == parallel.MeshConfig()
  assert parallel.mesh_config(_cfg(devices=1, params="fsdp")).params == "fsdp"
  for bad, needle in ((dict(devices=-1), "config.mesh.devices"),
                      (dict(params="zero"), "config.mesh.params"),
                      (dict(coordinator="host"), "config.mesh.coordinator"),
                      (dict(process_id=-2), "config.mesh.process_id")):
    with pytest.raises(ConfigError, match=needle):
      parallel.mesh_config(_cfg(**bad))
  c = _cfg()
  c.mesh.shards = 2
  with pytest.raises(ConfigError, match="config.mesh.shards: unknown key"):
    parallel.mesh_config(c)
  with pytest.raises(ConfigError, match="available"):
    parallel.make_mesh(parallel.MeshConfig(devices=jax.device_count() + 1))


def test_fsdp_splits_large_arrays_along_a_divisible_axis():
  mesh = parallel.make_mesh(parallel.MeshConfig(devices=1))
  tree = {"w": np.zeros((3, 3, 16, 32)), "b": np.zeros((32,)), "s": np.zeros(())}
  sh = parallel.state_shardings(tree, mesh, parallel.MeshConfig(params="fsdp", fsdp_min_size=64))
  # one device: nothing to split
  assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree.leaves(sh))
  assert parallel._fsdp_spec((3, 3, 16, 32), 8, 64) == jax.sharding.PartitionSpec(
      None, None, "data")
  assert parallel._fsdp_spec((3, 5), 8, 1) == jax.sharding.PartitionSpec()        # no axis fits
  assert parallel._fsdp_spec((32,), 8, 64) == jax.sharding.PartitionSpec()         # too small


def test_process_slices_cover_a_batch_once():
  assert parallel.process_slice(16) == slice(0, 16)   # one process here
  with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
    parallel.check_batch(12, type("M", (), {"shape": {"data": 8}})(), "config.train.batch_size")


def test_host_values_leave_a_one_process_tree_as_it_is():
  tree = {"w": jax.numpy.ones((4, 2)), "n": np.zeros(3)}
  out = parallel.host_values(tree)
  assert out["w"] is tree["w"] and out["n"] is tree["n"]


def test_sharded_training_equals_one_device_training():
  """3 sandwich steps of the digits smoke supernet (one block per stage, kernels 3 and 5, batch
  16) on 8 devices, with replicated and FSDP-split parameters, end where the one-device run ends
  (float32 reduction order aside)."""
  r = on_8_devices()["train"]
  assert set(r) == {"8", "8-fsdp"}
  for label, d in r.items():
    assert d["params_abs"] < 1e-4, (label, d)
    assert d["stats_rel"] < 1e-3, (label, d)
  assert r["8-fsdp"]["split_leaves"] > 10


def test_tunas_shards_on_a_mesh_equal_one_device():
  """TuNAS as it ran on TPU cores: 2 architectures per step, each on its slice of the batches.
  On a mesh of 2 devices (``shards=0``: one per device) the search ends where the one-device
  2-shard search ends: weights, BN statistics, policy and baseline."""
  r = on_8_devices()["tunas"]
  assert set(r) == {"2x0"}
  for label, d in r.items():
    assert d["params_abs"] < 1e-4, (label, d)
    assert d["stats_rel"] < 1e-3, (label, d)
    assert d["logits_abs"] < 1e-5 and d["baseline_abs"] < 1e-6, (label, d)
    assert d["policy_moved"] > 1e-4, (label, d)   # the policy did learn in these steps


def test_sharded_scoring_equals_one_device_scoring():
  """A tiny supernet's population (8 members) re-calibrated and scored with its members split
  over 8 and over 2 devices (block 8; chunks of 2 on 2) and with its images split over 8 (block
  2): the BN statistics are one device's (allclose, rtol = atol = 1e-5) and so are the
  predictions; the Scorer on 8 devices (members split) classifies as the one-device Scorer.  The
  statistics stay split along members, and the calibration batches are split along images in the
  image layout (where moments over each device's 2 images instead of all 16 would show in the
  variances)."""
  r = on_8_devices()["score"]
  assert set(r) == {"8-members", "2-members-chunked", "8-images", "scorer"}
  for label in ("8-members", "2-members-chunked", "8-images"):
    d = r[label]
    assert d["stats"] <= 1.0 and d["pred_diff"] == 0, (label, d)
  assert r["8-members"]["over"] == r["2-members-chunked"]["over"] == "members"
  assert r["8-members"]["stats_spec"] == "P('data',)", r["8-members"]
  assert r["8-images"]["over"] == "images"
  assert r["8-images"]["calib_spec"] == "P(None, 'data')", r["8-images"]
  assert r["scorer"] == {"correct_equal": True, "over": "members"}, r["scorer"]


# -- Two processes joined with jax.distributed ----------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The digits smoke run made smaller (one block per stage, two kernel sizes, 4 steps, a family of
# two): the two processes and the one-process reference compile at the same time on a CPU.
TWO_PROCESS_RUN = [
    "--config", "digits_mbv3:smoke", "--config.space.depth_choices=(1,)",
    "--config.space.kernel_choices=(3,5)", "--config.search.budgets=(0.6,0.9)",
    "--config.train.steps=4", "--config.train.warmup_steps=1", "--config.train.checkpoint_every=2",
    "--config.train.progress_every=2", "--config.train.calib_images=64",
    "--config.train.calib_batch_size=64"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env() -> dict:
  """A subprocess's environment: CPU devices, this checkout's ``regnas_jax``."""
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))


def _start(workdir, cwd, devices, *extra):
  """``run_search.py`` on ``devices`` local CPU devices, in ``cwd``; stdout and stderr together."""
  env = _env()
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_search.py"), *TWO_PROCESS_RUN,
                           "--workdir", str(workdir), *extra], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _outputs(procs, timeout: int) -> list[str]:
  """What each of ``procs`` printed once all ended (killed after ``timeout`` seconds each)."""
  try:
    return [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def _listing(workdir) -> list[str]:
  """The files of a work dir, with orbax's content-hash names as ``*`` and without process 1's
  share of a collectively saved checkpoint (``ocdbt.process_1``, ``array_metadatas/process_1``,
  which every process writes by design)."""
  out = set()
  for dirpath, dirs, files in os.walk(workdir):
    rel = os.path.relpath(dirpath, workdir)
    for name in dirs + files:
      p = os.path.normpath(os.path.join(rel, name))
      if "process_1" in p.split(os.sep)[-1] or f"process_1{os.sep}" in p:
        continue
      parts = p.split(os.sep)
      out.add(os.sep.join("*" if i and parts[i - 1] == "d" else x for i, x in enumerate(parts)))
  return sorted(out)


def test_two_processes_equal_one_process(tmp_path):
  """Two processes joined with jax.distributed (gloo CPU collectives, one device each) train the
  smoke supernet and search a family; the result equals a one-process run with the same global
  batch on two devices (the same split of every batch), process 0 wrote every file (the work
  dir lists what the one-process run's does, besides process 1's share of the collectively
  saved checkpoints) and process 1 wrote nothing (its own cwd stays empty, it reports no
  files)."""
  port = _free_port()
  one, two = tmp_path / "one", tmp_path / "two"
  cwds = [tmp_path / f"cwd{i}" for i in range(3)]
  for c in cwds:
    c.mkdir()
  procs = [_start(one, cwds[0], 2)] + [
      _start(two, cwds[1 + i], 1, f"--config.mesh.coordinator=localhost:{port}",
             "--config.mesh.num_processes=2", f"--config.mesh.process_id={i}") for i in (0, 1)]
  logs = _outputs(procs, timeout=900)
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert "process 0/2: 1 local of 2 devices" in logs[1]
  assert "process 1/2: 1 local of 2 devices" in logs[2]
  assert "wrote results.json" in logs[0] and "wrote results.json" in logs[1]
  assert "wrote" not in logs[2]
  assert [os.listdir(c) for c in cwds] == [[], [], []]   # no stray relative writes either

  # the result: the searched family, its top-1s and the trained arrays
  r1, r2 = (json.loads((w / "results.json").read_text()) for w in (one, two))
  m1, m2 = r1["family"]["members"], r2["family"]["members"]
  assert [m["arch"] for m in m1] == [m["arch"] for m in m2]
  for a, b in zip(m1, m2):
    for k in ("val_top1", "test_top1", "macs"):
      assert a[k] == pytest.approx(b[k], abs=1e-6), (k, a, b)
  assert [e["val_top1"] for e in r1["evaluated"]] == pytest.approx(
      [e["val_top1"] for e in r2["evaluated"]], abs=1e-6)
  for m in m1:   # the trained weights, as exported per member (host arrays: any topology)
    v1, v2 = (export.load_subnet(str(w / "subnets" / m["name"]))[1] for w in (one, two))
    l1, l2 = jax.tree.leaves(v1), jax.tree.leaves(v2)
    assert len(l1) == len(l2) > 10
    diff = max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(l1, l2) if np.size(x))
    assert diff < 1e-4, (m["name"], diff)

  # the files: process 0's alone, besides process 1's share of each collective checkpoint
  assert _listing(one) == _listing(two)
  assert (two / "checkpoints" / "4" / "state" / "ocdbt.process_1").is_dir()
  assert not (one / "checkpoints" / "4" / "state" / "ocdbt.process_1").exists()


_GATHER = """
import sys, numpy as np
from regnas_jax import fs, parallel
mc = parallel.MeshConfig(coordinator='localhost:' + sys.argv[1], num_processes=2,
                         process_id=int(sys.argv[2]), params='fsdp', fsdp_min_size=4)
parallel.initialize(mc, log=lambda m: None)
mesh = parallel.make_mesh(mc)
tree = {'w': np.arange(24, dtype=np.float32).reshape(4, 6), 's': np.float32(3)}
placed = parallel.place(tree, parallel.state_shardings(tree, mesh, mc))
assert not placed['w'].is_fully_addressable and not placed['w'].is_fully_replicated
out = parallel.host_values(placed)
assert isinstance(out['w'], np.ndarray) and np.array_equal(out['w'], tree['w'])
assert out['s'] is placed['s']
fs.barrier('end')
print('gathered')
"""


def test_host_values_gather_fsdp_split_arrays_of_two_processes(tmp_path):
  """Two joined processes, an array split over their devices (FSDP): every process gets its
  whole value on the host; replicated arrays stay as they are."""
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, "-c", _GATHER, port, str(i)], cwd=tmp_path, env=_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in (0, 1)]
  logs = _outputs(procs, timeout=300)
  for p, log in zip(procs, logs):
    assert p.returncode == 0 and "gathered" in log, log[-3000:]
