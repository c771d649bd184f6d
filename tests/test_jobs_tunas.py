"""The TuNAS job end to end on the smoke config: outputs, exact resume, the random baseline,
TuNAS's own latency model as the cost."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
import tbevents

from regnas_jax import export, identity, jobs, latency_tunas, spaces
from regnas_jax.errors import ConfigError
from regnas_jax.jobs import build
from regnas_jax import checkpoint as ckpt_lib
from regnas_jax.search import tunas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(variants="smoke"):
  import importlib.util
  spec = importlib.util.spec_from_file_location("digits_tunas",
                                                os.path.join(ROOT, "configs", "digits_tunas.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variants)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  work = str(tmp_path_factory.mktemp("tunas") / "w")
  cfg = smoke_config()
  cfg.runtime.tensorboard = True
  results = jobs.run(cfg, work, "search")
  return work, results


def test_outputs(run_dir):
  work, res = run_dir
  cfg = smoke_config()
  space = build.build_space(cfg)
  on_disk = json.load(open(os.path.join(work, "results.json")))
  assert on_disk["tunas"] == json.loads(json.dumps(res["tunas"]))
  # The trajectory: one record per logged step with reward, Q, cost, entropy and warmup.
  traj = [json.loads(ln) for ln in open(os.path.join(work, "trajectory.jsonl"))]
  assert [r["step"] for r in traj] == list(range(cfg.train.log_every, cfg.train.steps + 1,
                                                 cfg.train.log_every))
  for r in traj:
    assert {"reward", "quality", "cost", "policy_entropy", "argmax_cost", "warmup_p"} <= set(r)
    assert 0 <= r["quality"] <= 1
  # Warmup probability falls linearly to 0 at 25% of the search; RL learning rate 0 before.
  total = cfg.train.steps
  for r in traj:
    mid = np.mean([max(0.0, 1 - s / (0.25 * total)) for s in range(r["step"] - 2, r["step"])])
    assert abs(r["warmup_p"] - mid) < 1e-5
  assert os.path.getsize(os.path.join(work, "trajectory.png")) > 1000
  assert os.path.getsize(os.path.join(work, "training.png")) > 1000
  # TensorBoard: the trajectory's numbers per logged step, the wall-clock time left out
  tags = tbevents.scalars(os.path.join(work, "tensorboard"))
  assert set(tags) == set(traj[0]) - {"step", "time"}
  assert tags["reward"] == [(r["step"], pytest.approx(r["reward"], abs=1e-6)) for r in traj]
  # The argmax model: the argmax of the saved policy, its cost as reported, exported.
  ck = ckpt_lib.Checkpointer(os.path.join(work, "checkpoints"), {})
  saved = ck.restore_arrays()
  ck.close()
  logits = {k: np.asarray(v) for k, v in saved["ctrl"]["logits"].items()}
  best = space.canonicalize(tunas.argmax_arch(space, logits))
  top = res["models"][0]
  assert top["arch"] == space.arch_to_dict(best)
  assert top["macs"] == space.macs(space.arch_from_dict(top["arch"]))
  assert abs(top["cost"] - top["macs"] / 1e6) < 1e-6
  target = res["tunas"]["target"]
  assert abs(target - 0.5 * space.macs(space.max_arch()) / 1e6) < 1e-6
  assert abs(res["tunas"]["argmax_cost_rel"] - (top["cost"] / target - 1)) < 1e-9
  module, variables, arch, info = export.load_subnet(os.path.join(work, "subnets", "tunas"))
  assert info["arch"] == top["arch"]
  # Random baseline: distinct archs inside the window, scored like the argmax.
  rnd = res["models"][1:]
  assert len(rnd) == cfg.search.random_samples
  assert len({json.dumps(r["arch"]) for r in rnd}) == len(rnd)
  for r in rnd:
    assert abs(r["cost"] / target - 1) <= cfg.search.random_window + 1e-9
  # Policy probabilities: valid choices only, summing to one.
  pol = res["policy"]
  assert abs(sum(pol["sep_kernel"].values()) - 1) < 1e-3
  for row in pol["filters"]:
    assert abs(sum(row.values()) - 1) < 1e-3


def test_killed_search_resumes_to_the_same_state(run_dir, tmp_path):
  """Remove the final checkpoint (what a kill after the middle one leaves): the resumed search
  recomputes the last steps to exactly the same weights, policy and trajectory."""
  work, _ = run_dir
  cfg = smoke_config()
  copy = str(tmp_path / "w")
  shutil.copytree(work, copy)
  ck = ckpt_lib.Checkpointer(os.path.join(copy, "checkpoints"), {})
  final = ck.latest_step()
  assert final == cfg.train.steps
  full = ck.restore_arrays()
  ck.close()
  shutil.rmtree(os.path.join(copy, "checkpoints", str(final)))
  for f in ("results.json", "trajectory.png"):
    os.remove(os.path.join(copy, f))
  with open(os.path.join(copy, "trajectory.jsonl"), "a") as f:
    f.write('{"step": 7, "stale": tru')   # a line cut by the kill
  out = jobs.run(cfg, copy, "train")
  assert out["training"]["steps"] == cfg.train.steps
  ck = ckpt_lib.Checkpointer(os.path.join(copy, "checkpoints"), {})
  resumed = ck.restore_arrays()
  ck.close()
  flat = lambda t: jax.tree_util.tree_leaves_with_path(t)
  for (pa, a), (pb, b) in zip(flat(full), flat(resumed)):
    assert pa == pb
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(pa))
  t_full = [json.loads(ln) for ln in open(os.path.join(work, "trajectory.jsonl"))]
  t_res = [json.loads(ln) for ln in open(os.path.join(copy, "trajectory.jsonl"))]
  strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]
  assert strip(t_res) == strip(t_full)


def test_config_errors_name_the_key(tmp_path):
  bad = [({"search.reward": "linear"}, "config.search.reward: 'linear' is not one of"),
         ({"search.cost": "flops"}, "config.search.cost: 'flops' is not one of"),
         ({"search.cost": "tunas", "search.target_unit": "mmacs"},
          "config.search.target_unit: 'mmacs' does not fit cost 'tunas'"),
         ({"search.cost": "tunas", "search.target_unit": "ms", "search.target": 1.0},
          r"config.search.target: 1 ms is outside the space's range"),
         ({"search.cost": "tunas", "space.resolutions": (8, 16)},
          "config.space.resolutions: TuNAS's latency model .* has no resolution term"),
         ({"search.target": 2.0}, "config.search.target: a fraction"),
         ({"search.target_unit": "mmacs", "search.target": 1e6}, "is outside the space's range"),
         ({"search.beta": 0.1}, "config.search.beta: must be < 0"),
         ({"search.warmup_fraction": 0.5}, "config.search.warmup_fraction: must be in"),
         ({"search.val_batch_size": 10_000},
          "config.search.val_batch_size: an RL batch of 10000 exceeds"),
         ({"search.rl_batch_size_multiplier": 1000},
          "config.search.rl_batch_size_multiplier: an RL batch of 64000 exceeds"),
         ({"search.rl_batch_size_multiplier": -1}, "config.search.rl_batch_size_multiplier: must"),
         ({"search.shards": -1}, "config.search.shards: must be an integer >= 0"),
         ({"search.shards": 3}, "config.train.batch_size: 64 does not split into the 3 shards"),
         ({"search.shards": 2, "search.val_batch_size": 63},
          "the RL batch .* 63 does not split into the 2 shards"),
         ({"space.name": "scarlet_s1"}, "TuNAS needs one of its spaces")]
  for overrides, msg in bad:
    cfg = smoke_config()
    for k, v in overrides.items():
      sec, key = k.split(".")
      cfg[sec][key] = v
    if overrides.get("space.name") == "scarlet_s1":
      cfg.space = dict(name="scarlet_s1", width_mult=0.25, stem="small", num_classes=10,
                       resolutions=(8,))
      import ml_collections
      cfg.space = ml_collections.ConfigDict(cfg.space)
    work = str(tmp_path / "w")
    with pytest.raises(ConfigError, match=msg):
      jobs.run(cfg, work, "search")
    assert not os.path.exists(work)   # nothing written, not even the work dir


def test_search_with_tunas_latency_model(tmp_path):
  """``search.cost='tunas'``: TuNAS's released latency model of the space is the cost (ms; the
  target half the largest subnet's estimate); the search runs end to end, and every cost it
  reports is the model's estimate of that architecture."""
  cfg = smoke_config()
  cfg.search.update(dict(cost="tunas", random_samples=1))
  cfg.train.update(dict(steps=4, checkpoint_every=4, progress_every=4))
  res = jobs.run(cfg, str(tmp_path / "w"), "search")
  space = build.build_space(cfg)
  estimate = lambda a: float(latency_tunas.estimate_ms(
      space.name, latency_tunas.arch_to_indices(space, a)))
  lo, hi = estimate(space.min_arch()), estimate(space.max_arch())
  assert res["tunas"]["unit"] == "ms"
  assert res["tunas"]["target"] == pytest.approx(0.5 * hi, rel=1e-6)
  assert res["cost_model"]["model"] == "tunas"
  assert res["cost_model"]["source"]["path"] == "tunas/cost_model_data.py"
  assert len(res["models"]) == 2
  for row in res["models"]:
    assert row["cost"] == pytest.approx(estimate(space.arch_from_dict(row["arch"])), rel=1e-5)
  traj = [json.loads(ln) for ln in open(tmp_path / "w" / "trajectory.jsonl")]
  assert [r["step"] for r in traj] == list(range(cfg.train.log_every, 5, cfg.train.log_every))
  for r in traj:
    assert 0 < lo < r["cost"] < hi and 0 < r["argmax_cost"] < hi


def test_random_in_window_rejection_sampling():
  from regnas_jax.jobs import tunas as tunas_job
  sp = spaces.get_space("proxylessnas_enlarged", width_mult=0.25, stem="small", num_classes=10,
                        resolutions=(8,))
  cost = lambda a: sp.macs(a) / 1e6
  target = 0.3 * float(cost(sp.max_arch()))
  got, drawn = tunas_job.random_in_window(sp, cost, target, 0.02, 5, 100_000, seed=0)
  assert len(got) == 5 and drawn >= 1024
  for a in got:
    assert abs(float(cost(a)) / target - 1) <= 0.02
  none, drawn = tunas_job.random_in_window(sp, cost, 0.5 * float(cost(sp.min_arch())), 0.01, 3,
                                           2048, seed=0)
  assert none == [] and drawn == 2048


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/digits_tunas.py:v4"], "unknown variant 'v4'"),
    (["--config", "configs/digits_tunas.py", "--config.search.reward=linear"],
     "config.search.reward: 'linear' is not one of"),
])
def test_cli_bad_input_one_error_line_and_nothing_written(tmp_path, args, message):
  import subprocess
  import sys
  work = tmp_path / "work"
  out = subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), *args, "--workdir",
                        str(work)], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
  assert not work.exists()


def test_shards_rl_batch_and_lr_scaling_settings():
  """TuNAS's settings: the RL batch as a multiple of the training batch, learning rates per 256
  images, one architecture per device with ``shards=0``; each enters the search's identity
  (the shard count as resolved)."""
  from regnas_jax.jobs import tunas as tunas_job
  cfg = smoke_config()
  space = build.build_space(cfg)
  base = identity.tunas(cfg, space, shards=tunas_job.shard_count(cfg))["search"]
  assert (base["shards"], base["rl_batch_size_multiplier"], base["scale_lr_by_batch"]) == (
      1, 0, False)
  assert tunas_job.rl_batch_size(cfg) == cfg.search.val_batch_size
  assert tunas_job.lr_scale(cfg) == 1.0 and tunas_job.shard_count(cfg) == 1
  cfg.search.update(dict(rl_batch_size_multiplier=4, scale_lr_by_batch=True, shards=0))
  assert tunas_job.rl_batch_size(cfg) == 4 * cfg.train.batch_size
  assert tunas_job.lr_scale(cfg) == cfg.train.batch_size / 256
  ccfg = tunas_job.controller_config(cfg.search, tunas_job.lr_scale(cfg))
  assert abs(ccfg.learning_rate - cfg.search.rl_learning_rate * cfg.train.batch_size / 256) < 1e-12
  assert tunas_job.shard_count(cfg) == jax.device_count()   # 0: one per device of the mesh
  ident = identity.tunas(cfg, space, shards=tunas_job.shard_count(cfg))["search"]
  assert ident["rl_batch_size_multiplier"] == 4 and ident["scale_lr_by_batch"] is True
  assert ident["shards"] == jax.device_count()
