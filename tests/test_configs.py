"""Every config file and its smoke variant loads, builds its space and training schedule;
TuNAS's ImageNet setting (configs/imagenet_tunas.py) checked against TuNAS's numbers and its
smoke variant run end to end on a generated image folder (``regnas_jax.data.synthetic``)."""

import glob
import importlib.util
import json
import os

import numpy as np
import pytest

from regnas_jax import jobs, training
from regnas_jax.data import synthetic
from regnas_jax.defaults import DATASETS, data_defaults, score_defaults, train_defaults
from regnas_jax.jobs import build
from regnas_jax.jobs import tunas as tunas_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith("__init__.py"))


def load(path, variant):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_config_builds(path, variant):
  cfg = load(path, variant)
  build.check_common(cfg)
  space = build.build_space(cfg)
  build.build_supernet(cfg, space)
  jobs.get_job(cfg.search.algorithm).check(cfg, space)
  if cfg.search.algorithm != "tunas" and cfg.train.steps:   # TuNAS: its own loop; steps=0:
    phases = training.build_phases(cfg.train, space)        # imported weights, no training
    assert sum(p.steps for p in phases) == cfg.train.steps
  if variant == "smoke":
    assert cfg.train.steps <= 20 and cfg.name.endswith("_smoke")
  with pytest.raises(ValueError, match="unknown variant"):
    load(path, "nope")


def test_there_are_digits_and_cifar10_configs():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {"digits_mbv3.py", "cifar10_mbv3.py"} <= names


@pytest.mark.parametrize("name", ["digits_tunas.py", "cifar10_tunas.py"])
def test_tunas_variants_combine(name):
  path = os.path.join(ROOT, "configs", name)
  cfg = load(path, "v3,latency,smoke")
  assert cfg.space.name == "mobilenet_v3_like" and cfg.search.cost == "latency"
  assert cfg.name.endswith("_mobilenet_v3_like_latency_smoke")
  assert build.build_space(load(path, None)).name == "proxylessnas"
  assert build.build_space(load(path, "enlarged")).name == "proxylessnas_enlarged"
  with pytest.raises(ValueError, match="choose one of the variants enlarged and v3"):
    load(path, "enlarged,v3")


@pytest.mark.parametrize("name", ["digits_scarlet.py", "cifar10_scarlet.py"])
def test_scarlet_variants_combine(name):
  path = os.path.join(ROOT, "configs", name)
  cfg = load(path, "s2,no_els,smoke")
  assert cfg.space.name == "scarlet_s2" and cfg.space.els is False
  assert cfg.name.endswith("_s2_no_els_smoke")
  assert build.build_space(load(path, None)).name == "scarlet_s1"
  with pytest.raises(ValueError, match="choose one of the variants s1 and s2"):
    load(path, "s1,s2")


# The configs on a dataset with shared sections (regnas_jax.defaults.DATASETS); the ImageNet ones
# state OFA's own data and scoring settings in full.
SHARED = [p for p in CONFIGS if os.path.basename(p).split("_")[0] in DATASETS]


def test_every_config_but_imagenet_shares_its_dataset_sections():
  assert {os.path.basename(p) for p in CONFIGS} - {os.path.basename(p) for p in SHARED} == {
      "imagenet_ofa_mbv3.py", "imagenet_ofa_resnet50.py", "imagenet_tunas.py"}


@pytest.mark.parametrize("path", SHARED, ids=os.path.basename)
def test_configs_take_the_shared_sections_of_their_dataset(path):
  """The data section is the shared one of the config's dataset (the smoke variant with the
  dataset's smoke settings), and so are the augmentation and the values the config leaves."""
  for variant in (None, "smoke"):
    cfg = load(path, variant)
    dataset = os.path.basename(path).split("_")[0]
    assert dataset in DATASETS and cfg.data.name == dataset
    shared = DATASETS[dataset]
    expected = data_defaults(dataset)
    if variant:
      expected.update(shared["smoke"].get("data", {}))
    assert cfg.data.to_dict() == expected.to_dict()
    assert cfg.train.augment.to_dict() == train_defaults(dataset).augment.to_dict()
    base = score_defaults(dataset).to_dict()
    if variant:
      base.update(shared["smoke"].get("score", {}))
    own = {k for k in base if cfg.score[k] != base[k]}
    assert own <= {"block_size"}, own   # only cifar10_tunas sets its own block size


def test_imagenet_tunas_is_tunas_search_setting():
  """TuNAS's released search settings: 90 epochs of 1,231,121 images at batch 4,096, learning
  rates per 256 images scaled to that batch, validation batch 4 x the training batch."""
  cfg = load(os.path.join(ROOT, "configs", "imagenet_tunas.py"), None)
  space = build.build_space(cfg)
  build.check_common(cfg)
  jobs.get_job(cfg.search.algorithm).check(cfg, space)
  assert (space.name, space.width_mult, space.resolutions) == ("proxylessnas", 1.0, (224,))
  assert (cfg.data.name, cfg.data.tfds_name, cfg.data.image_size) == ("tfds", "imagenet2012", 224)
  assert cfg.data.val_size == 50_046                     # TuNAS's held-out validation images
  tc, se = cfg.train, cfg.search
  assert tc.batch_size == 4096 and tc.steps == int(90 * (1_281_167 - 50_046) / 4096) == 27_050
  assert se.scale_lr_by_batch and se.shards == 0          # per 256 images; one arch per device
  assert tc.lr * tunas_job.lr_scale(cfg) == pytest.approx(0.165 * 4096 / 256)        # 2.64
  assert tc.warmup_steps == round(0.025 * 27_050) == 676
  assert (tc.optimizer, tc.momentum, tc.nesterov) == ("sgd", 0.9, False)
  assert (tc.weight_decay, tc.label_smoothing, tc.kd_ratio) == (4e-5, 0.1, 0.0)
  assert se.rl_learning_rate * tunas_job.lr_scale(cfg) == pytest.approx(0.0003 * 4096 / 256)
  assert tunas_job.rl_batch_size(cfg) == 4 * tc.batch_size == 16_384
  assert (se.reward, se.beta, se.rl_delay_fraction, se.rl_increase, se.baseline_momentum,
          se.entropy_weight, se.warmup_fraction) == ("abs", -0.1, 0.25, 10.0, 0.95, 0.0, 0.25)
  assert (se.cost, se.target, se.target_unit) == ("tunas", 84.0, "ms")   # TuNAS's target
  # T0 is the estimated latency of ProxylessNAS-Mobile (TuNAS's model archive: op indices per
  # layer), 320 MMACs, in TuNAS's latency model of this space.
  ops = (1, 0, 6, 6, 2, 0, 1, 1, 5, 1, 1, 1, 4, 1, 1, 1, 5, 5, 2, 2, 5)
  names = ["e3_k3", "e3_k5", "e3_k7", "e6_k3", "e6_k5", "e6_k7", "zero"]
  arch = space.arch_from_dict({"space": "proxylessnas", "resolution": 224, "stem_kernel": 3,
                          "sepconv": "k3", "widths": [32, 16, 32, 40, 80, 96, 192, 320, 1280],
                          "layers": [names[i] for i in ops]})
  assert float(space.macs(arch)) / 1e6 == pytest.approx(320.4, abs=0.1)
  cost, target, unit, _ = tunas_job.tunas_cost(cfg, space)
  assert (target, unit) == (84.0, "ms") and float(cost(arch)) == pytest.approx(target, rel=0.01)


@pytest.mark.slow
def test_imagenet_tunas_smoke_end_to_end(tmp_path):
  """The TuNAS job on the ImageNet config's layout, on a generated image folder.  Slow: the same
  job runs end to end on the digits config in tests/test_jobs_tunas.py, and this config's values
  are checked above."""
  cfg = load(os.path.join(ROOT, "configs", "imagenet_tunas.py"), "smoke")
  cfg.data.path = str(tmp_path / "images")
  synthetic.generate(cfg.data.path)
  work = tmp_path / "work"
  results = jobs.run(cfg, str(work))
  assert results["search"]["steps"] == cfg.train.steps == 4
  final = results["search"]["final"]
  assert final["step"] == 4
  for k in ("reward", "quality", "cost", "loss", "baseline", "policy_entropy", "rl_lr"):
    assert np.isfinite(final[k]), k
  traj = [json.loads(line) for line in open(work / "trajectory.jsonl")]
  assert [r["step"] for r in traj] == [1, 2, 3, 4]
  assert traj[0]["warmup_p"] > traj[-1]["warmup_p"]          # filter / op warmup decays
  rows = results["models"]
  assert rows[0]["name"] == "TuNAS argmax" and 0 <= rows[0]["test_top1"] <= 1
  assert results["tunas"]["unit"] == "ms" and results["tunas"]["target"] > 0
  assert os.path.isdir(work / "subnets" / "tunas")
  with open(work / "results.json") as f:
    assert json.load(f)["search"]["steps"] == 4
