"""The paper's setting as configs (configs/imagenet_ofa_*.py) and their smoke variants end to end
on imported random-weight OFA supernets (CPU, ``config.supernet.init_from`` with
``train.steps=0``), on a small generated image folder (``regnas_jax.data.synthetic``, what the
smoke variants read; no ImageNet, no tfds).
"""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from regnas_jax import export, jobs, training
from regnas_jax.jobs import build
from regnas_jax.jobs.family import budget_windows
from regnas_jax.data import synthetic
from regnas_jax.io import ofa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("imagenet_ofa_mbv3.py", "imagenet_ofa_resnet50.py")


def load(name, variant=None):
  path = os.path.join(ROOT, "configs", name)
  spec = importlib.util.spec_from_file_location(name[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_setting(name):
  cfg = load(name)
  sp = build.build_space(cfg)
  assert (cfg.train.steps, cfg.supernet.init_from, cfg.data.tfds_name) == (0, "", "imagenet2012")
  assert cfg.data.val_size == 10000 and cfg.seed == 0       # OFA's holdout; seed 0
  se = cfg.search
  assert (se.reference_reward, se.reward, se.inclusion, se.budget_unit) == (
      "R0", "R2", True, "mmacs")
  assert tuple(se.budgets) == ((150, 300) if sp.name == "ofa_mbv3" else (2000, 3000, 4000, 5000))
  assert (se.population_size, se.parent_ratio, se.mutation_ratio, se.mutate_prob,
          se.resolution_mutate_prob, se.generations) == (100, 0.25, 0.5, 0.1, 0.5, 500)
  # Every budget window holds subnets of the space.
  lo, hi = float(sp.macs(sp.min_arch())), float(sp.macs(sp.max_arch()))
  for low, high in budget_windows(cfg, sp):
    assert high > lo and low < hi
  # Fine-tuning the imported weights instead (train.steps > 0) builds a schedule.
  cfg.train.steps = 1000
  assert sum(p.steps for p in training.build_phases(cfg.train, sp)) == 1000
  # The smoke variant's supernet is exactly the fixture checkpoint's.
  smoke = load(name, "smoke")
  net = build.build_supernet(smoke, build.build_space(smoke))
  state = ofa.read_state_dict(smoke.supernet.init_from)
  settings = {k: v for k, v in net.space.config().items() if k not in ("space", "num_classes")}
  assert ofa.space_for_state_dict(net.space.name, state, **settings) == net.space


def run_job(cfg, workdir):
  """The job behind the regnas-search command, on a generated 10-class image folder (the smoke
  variants' data) beside ``workdir``."""
  images = os.path.join(os.path.dirname(workdir), "images")
  synthetic.generate(images)
  cfg.data.path = images
  return jobs.run(cfg, workdir)


@pytest.mark.parametrize("name", CONFIGS)
def test_smoke_end_to_end_on_imported_weights(tmp_path, name):
  cfg = load(name, "smoke")
  results = run_job(cfg, str(tmp_path / "work"))
  assert results["training"]["steps"] == 0
  members = results["family"]["members"]
  assert len(members) == len(cfg.search.budgets)
  # The family was searched on the imported weights, untrained: every exported member's
  # parameters are the imported ones sliced (its BN statistics are re-calibrated ones).
  space = build.build_space(cfg)
  net = build.build_supernet(cfg, space)
  imported = ofa.load_supernet_variables(cfg.supernet.init_from, net)
  for m in members:
    _, v, arch, _ = export.load_subnet(os.path.join(tmp_path, "work", "subnets", m["name"]))
    _, want = net.extract(imported, arch)
    jax.tree.map(np.testing.assert_allclose, v["params"], jax.tree.map(np.asarray, want["params"]))


def test_train_variant_is_ofas_progressive_shrinking():
  """``:train``: OFA's schedule (epochs, learning rates, subnets per step at batch 2,048) on
  OFA's w1.0 network at its 25 training resolutions, checked as the job checks it."""
  cfg = load("imagenet_ofa_mbv3.py", "train")
  assert cfg.name == "imagenet_ofa_mbv3_train" and cfg.supernet.init_from == ""
  sp = build.build_space(cfg)
  net = build.build_supernet(cfg, sp)
  jobs.get_job(cfg.search.algorithm).check(cfg, sp)
  assert (sp.width_mult, sp.resolutions) == (1.0, tuple(range(128, 225, 4)))
  assert len(sp.resolutions) == 25
  tc = cfg.train
  assert (tc.method, tc.batch_size, tc.optimizer, tc.momentum, tc.nesterov) == (
      "progressive", 2048, "sgd", 0.9, True)
  assert (tc.weight_decay, tc.label_smoothing, tc.kd_ratio, cfg.supernet.dropout_rate) == (
      3e-5, 0.1, 1.0, 0.1)
  assert cfg.input.augment == "inception"
  per_epoch = (1_281_167 - 10_000) / 2048        # ImageNet's train split minus OFA's holdout
  assert tc.steps == round(590 * per_epoch) == 366_205
  assert tc.warmup_steps == round(5 * per_epoch)
  phases, res = training.supernet.check_schedule(tc, net, sp)
  assert res == sp.resolutions
  assert [p.name for p in phases] == ["full", "kernel", "depth-1", "depth-2", "expand-1",
                                      "expand-2"]
  steps = [p.steps for p in phases]
  assert sum(steps) == tc.steps
  epochs = [s / per_epoch for s in steps]
  np.testing.assert_allclose([epochs[0], epochs[1], epochs[2] + epochs[3], epochs[4] + epochs[5]],
                             [180, 120, 145, 145], atol=0.01)
  np.testing.assert_allclose([p.lr for p in phases], [2.6, 0.96, 0.24, 0.24, 0.24, 0.24])
  assert [p.num_subnets for p in phases] == [1, 1, 2, 2, 4, 4]
  assert [p.distill for p in phases] == ["none"] + ["teacher"] * 5
  assert phases[0].sampler == "max" and {p.sampler for p in phases[1:]} == {"uniform"}
  allowed = [p.allowed_dict() for p in phases]
  assert [len(a["kernel"]) for a in allowed] == [1, 3, 3, 3, 3, 3]
  assert [len(a["depth"]) for a in allowed] == [1, 1, 2, 3, 3, 3]
  assert [len(a["expand"]) for a in allowed] == [1, 1, 1, 1, 2, 3]
  assert [p.reorder_keep for p in phases][4:] == [(), (4,)]   # channel re-ordering per stage
  with pytest.raises(ValueError, match="unknown variant"):
    load("imagenet_ofa_mbv3.py", "train,nope")


@pytest.mark.slow
def test_train_smoke_end_to_end_from_scratch(tmp_path):
  """``:train,smoke`` trains from scratch through every phase on a generated image folder, then
  searches.  Slow (four training programs of the ImageNet layout): the phases' order and settings
  are checked on this config above, and trained through on a small space in tests/test_train.py."""
  cfg = load("imagenet_ofa_mbv3.py", "train,smoke")
  assert cfg.name == "imagenet_ofa_mbv3_train_smoke" and cfg.supernet.init_from == ""
  work = tmp_path / "work"
  results = run_job(cfg, str(work))
  tr = results["training"]
  assert tr["steps"] == 4 and tr["resumed_from"] is None
  assert [p["name"] for p in tr["phases"]] == ["full", "kernel", "depth", "expand"]
  assert [p["steps"] for p in tr["phases"]] == [1, 1, 1, 1]
  assert [p["distill"] for p in tr["phases"]] == ["none", "teacher", "teacher", "teacher"]
  assert list(tr["phases"][-1]["reorder_keep"]) == []   # re-ordered, no earlier width kept
  metrics = [json.loads(line) for line in open(work / "metrics.jsonl")]
  assert [(m["step"], m["phase"]) for m in metrics] == [
      (1, "full"), (2, "kernel"), (3, "depth"), (4, "expand")]
  assert all(np.isfinite(m["loss"]) for m in metrics)
  assert all(np.isfinite(v) for v in results["test_top1"].values())
  members = results["family"]["members"]
  assert len(members) == len(cfg.search.budgets)
  for m in members:
    assert 0 <= m["test_top1"] <= 1 and m["macs"] > 0
    assert os.path.isdir(os.path.join(work, "subnets", m["name"]))
  with open(work / "results.json") as f:
    assert json.load(f)["training"]["steps"] == 4
