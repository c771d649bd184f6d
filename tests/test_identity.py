"""Run identities: saved identities of version 1 (no schema) are accepted through the comparison
(checkpoints, state files) when the run is the same, and a different run is refused naming the
first difference.

``fixtures/identities_v1.json`` holds identities as the code before schemas saved them: three
from the CIFAR-10 experiment's work dir (docs/results/regnas_cifar10_mbv3_cpu.json) and a TuNAS
one built by that code for ``digits_tunas.py:smoke``.
"""

import copy
import importlib.util
import json
import os

import jax.numpy as jnp
import pytest

from regnas_jax import identity, persist, training
from regnas_jax.checkpoint import Checkpointer, CheckpointError
from regnas_jax.errors import StateError
from regnas_jax.jobs import build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "tests", "fixtures", "identities_v1.json")) as f:
  V1 = json.load(f)


def config(name: str, variant: str):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


@pytest.fixture(scope="module")
def cifar():
  """The experiment's config as its run was started (the data path given on the command line)."""
  cfg = config("cifar10_mbv3", "cpu")
  cfg.data.path = V1["supernet"]["data"]["path"]
  cfg.data.cache_dir = "/somewhere/else"   # not part of any identity
  space = build.build_space(cfg)
  return cfg, space, training.build_phases(cfg.train, space)


def supernet_now(cifar, **kw):
  cfg, space, phases = cifar
  return persist.jsonable(identity.supernet(cfg, space, phases, **kw))


def test_the_experiments_identities_of_version_1_are_accepted(cifar):
  cfg, space, _ = cifar
  assert identity.difference(V1["supernet"], supernet_now(cifar)) is None
  saved = V1["exact"]
  exact = identity.exact(cfg, steps=8000, seed=0, resolution=16, teacher_resolution=16,
                         fd=dict(weight=0.3, alpha=1.0, beta=5.0, temperature=1.0, kind="kl"),
                         extra={"arch": saved["arch"]})
  assert identity.difference(saved, persist.jsonable(exact)) is None
  state = V1["search_state"]
  search = identity.search(cfg, space, state["identity"]["weights"])
  assert identity.difference(state, persist.jsonable(dict(state, identity=search))) is None


def test_a_state_file_of_version_1_is_read_and_another_run_refused(tmp_path, cifar):
  cfg, space, _ = cifar
  state = V1["search_state"]
  path = str(tmp_path / "seed0_R2.json")
  persist.save_state(path, state, members=[], current=None)
  now = dict(state, identity=identity.search(cfg, space, state["identity"]["weights"]))
  assert persist.read_state(path, now)["members"] == []
  other = copy.deepcopy(cfg)
  other.train.calib_images = 2000
  now = dict(state, identity=identity.search(other, space, state["identity"]["weights"]))
  with pytest.raises(StateError, match=r"identity\.calib_images: saved 1000, now 2000"):
    persist.read_state(path, now)


def test_a_checkpoint_of_version_1_restores_and_records_its_identity(tmp_path, cifar):
  tree = {"w": jnp.arange(3.0)}
  ck = Checkpointer(str(tmp_path), V1["supernet"])   # what the earlier code wrote
  ck.save(5, tree)
  ck.close()
  again = Checkpointer(str(tmp_path), supernet_now(cifar))
  got, _ = again.restore({"w": jnp.zeros(3)})
  assert got["w"].tolist() == [0.0, 1.0, 2.0]
  assert again.recorded_identity == V1["supernet"]   # its weights keep their fingerprint
  again.close()
  cfg, space, phases = cifar
  other = copy.deepcopy(cfg)
  other.seed = 1
  ck = Checkpointer(str(tmp_path), identity.supernet(other, space, phases))
  with pytest.raises(CheckpointError, match=r"belongs to another run \(seed: saved 0, now 1\)"):
    ck.restore({"w": jnp.zeros(3)})
  ck.close()


def test_tunas_identity_of_version_1_and_its_defaults():
  cfg = config("digits_tunas", "smoke")
  space = build.build_space(cfg)
  now = persist.jsonable(identity.tunas(cfg, space, shards=1))
  assert identity.difference(V1["tunas"], now) is None
  assert identity.difference(V1["tunas"], persist.jsonable(identity.tunas(cfg, space, shards=2))) \
      == "search.shards: saved 1, now 2"
  cfg.search.scale_lr_by_batch = True
  assert identity.difference(V1["tunas"], persist.jsonable(identity.tunas(cfg, space, shards=1))) \
      == "search.scale_lr_by_batch: saved False, now True"


def test_an_absent_setting_of_version_1_meant_its_default(cifar):
  cfg, space, phases = cifar
  inception = supernet_now(cifar, augment="inception")
  assert identity.difference(V1["supernet"], inception) == (
      "input.augment: saved 'pad_crop', now 'inception'")
  saved = dict(V1["supernet"], input={"augment": "inception"}, init_from={"file": "ofa.pth"})
  assert identity.difference(saved, supernet_now(cifar, augment="inception",
                                                 init_from={"file": "ofa.pth"})) is None
  assert identity.difference(V1["supernet"], supernet_now(cifar, init_from={"file": "ofa.pth"})) \
      == "init_from: saved None, now {'file': 'ofa.pth'}"


def test_retired_settings_read_as_absent_only_when_off(cifar):
  on = copy.deepcopy(V1["supernet"])
  on["train"]["envelopes"] = 2
  assert identity.difference(on, supernet_now(cifar)) == "train.envelopes: saved 2, now '(absent)'"
  off = copy.deepcopy(V1["supernet"])
  off["train"]["envelopes"] = 0
  assert identity.difference(off, supernet_now(cifar)) is None


def test_schemas_of_another_kind_or_a_later_version_are_refused(cifar):
  now = supernet_now(cifar)
  assert identity.difference(dict(now, schema="supernet/3"), now) == (
      "schema: saved 'supernet/3', now 'supernet/2'")
  assert identity.difference(dict(now, schema="exact/2"), now) == (
      "schema: saved 'exact/2', now 'supernet/2'")
  assert identity.difference(now, now) is None and now["schema"] == "supernet/2"
