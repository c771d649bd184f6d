"""Every config file and its smoke variant loads, builds its space and training schedule."""

import glob
import importlib.util
import os

import pytest

from regnas_jax import jobs, training
from regnas_jax.defaults import DATASETS, data_defaults, score_defaults, train_defaults
from regnas_jax.jobs import build

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
      "imagenet_ofa_mbv3.py", "imagenet_ofa_resnet50.py"}


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
