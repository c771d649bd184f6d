"""Meshes: config.mesh checks, layouts, and sharded training and scoring against one device.

The multi-device cases run in a subprocess with 8 simulated CPU devices (``tests/multidevice.py``):
JAX fixes its device count when it is first imported.
"""

import functools

import jax
import ml_collections
import numpy as np
import pytest

import multidevice
from regnas_jax import parallel
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


def test_sharded_training_equals_one_device_training():
  """3 sandwich steps of the digits smoke supernet (batch 16) on 2 and 8 devices, with
  replicated and FSDP-split parameters, end where the one-device run ends (float32 reduction
  order aside)."""
  r = on_8_devices()["train"]
  assert set(r) == {"2", "8", "8-fsdp"}
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
