"""The paper's setting as configs (configs/imagenet_ofa_*.py) and their smoke variants end to end
on imported random-weight OFA supernets (CPU, tfds mock data; ``config.supernet.init_from`` with
``train.steps=0``).  The end-to-end test needs ``tensorflow-datasets`` (TensorFlow itself is not
needed; the CI installs it) and is skipped without it.
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from regnas_jax import export, jobs, training
from regnas_jax.jobs import build
from regnas_jax.jobs.family import budget_windows
from regnas_jax import nn as nets
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
  assert cfg.data.val_size == 10000 and cfg.seed == 0       # OFA's holdout, the paper's seed 000
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
  """The job behind the regnas-search command."""
  return jobs.run(cfg, workdir)


@pytest.mark.parametrize("name", CONFIGS)
def test_smoke_end_to_end_on_imported_weights(tmp_path, name):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = load(name, "smoke")
  with tfds.testing.mock_data(num_examples=48, policy=tfds.testing.MockPolicy.USE_CODE):
    results = run_job(cfg, str(tmp_path))
  assert results["training"]["steps"] == 0
  members = results["family"]["members"]
  assert len(members) == len(cfg.search.budgets)
  # The family was searched on the imported weights, untrained: every exported member's
  # parameters are the imported ones sliced (its BN statistics are re-calibrated ones).
  space = build.build_space(cfg)
  net = build.build_supernet(cfg, space)
  imported = ofa.load_supernet_variables(cfg.supernet.init_from, net)
  for m in members:
    _, v, arch, _ = export.load_subnet(os.path.join(tmp_path, "subnets", m["name"]))
    _, want = nets.extract(net, imported, arch)
    jax.tree.map(np.testing.assert_allclose, v["params"], jax.tree.map(np.asarray, want["params"]))
