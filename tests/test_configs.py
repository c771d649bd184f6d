"""Every config file and its smoke variant loads, builds its space and training schedule."""

import glob
import importlib.util
import os

import pytest

from regnas_jax import pareto, pipeline, train, tunas_job

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path, variant):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("variant", [None, "smoke"])
def test_config_builds(path, variant):
  cfg = load(path, variant)
  pipeline.check_config(cfg)
  space = pipeline.build_space(cfg)
  if cfg.search.algorithm == "nsga2":
    pareto.check_config(cfg.search, space)
  pipeline.build_supernet(cfg, space)
  if cfg.search.algorithm == "tunas":   # its own loop: weights and policy together
    tunas_job.check_config(cfg, space, pipeline.ConfigError)
  elif cfg.train.steps:  # steps=0: the imported weights of supernet.init_from, no training
    phases = train.build_phases(cfg.train, space)
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
  assert pipeline.build_space(load(path, None)).name == "proxylessnas"
  assert pipeline.build_space(load(path, "enlarged")).name == "proxylessnas_enlarged"
  with pytest.raises(ValueError, match="choose one of the variants enlarged and v3"):
    load(path, "enlarged,v3")


@pytest.mark.parametrize("name", ["digits_scarlet.py", "cifar10_scarlet.py"])
def test_scarlet_variants_combine(name):
  path = os.path.join(ROOT, "configs", name)
  cfg = load(path, "s2,no_els,smoke")
  assert cfg.space.name == "scarlet_s2" and cfg.space.els is False
  assert cfg.name.endswith("_s2_no_els_smoke")
  assert pipeline.build_space(load(path, None)).name == "scarlet_s1"
  with pytest.raises(ValueError, match="choose one of the variants s1 and s2"):
    load(path, "s1,s2")
