"""Exact-network training: the focal distillation loss against values computed by hand, and a
short from-scratch run that resumes bit-identical after losing its last checkpoint, and the
fingerprint of finished weights."""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from regnas_jax import data, training
from regnas_jax.defaults import train_defaults
from regnas_jax.errors import ConfigError
from regnas_jax.training import FocalDistillation, focal_distillation

NEW = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], np.float32)
OLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]], np.float32)
LABELS = np.array([0, 1])   # the old model is right on sample 0 (argmax 0), wrong on sample 1


def softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_focal_distillation_kl_by_hand():
  fd = FocalDistillation(alpha=1.0, beta=5.0, temperature=2.0, kind="kl")
  t = 2.0
  p, q = softmax(OLD / t), softmax(NEW / t)
  kl = (p * (np.log(p) - np.log(q))).sum(-1) * t * t
  want = (6.0 * kl[0] + 1.0 * kl[1]) / 2            # weights alpha + beta, alpha
  got = float(focal_distillation(NEW, OLD, LABELS, fd))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_focal_distillation_logit_matching_by_hand():
  fd = FocalDistillation(alpha=0.5, beta=2.0, kind="logits")
  d = 0.5 * ((NEW - OLD) ** 2).sum(-1)              # [1.0, 5.75]
  want = (2.5 * d[0] + 0.5 * d[1]) / 2
  np.testing.assert_allclose(float(focal_distillation(NEW, OLD, LABELS, fd)), want, rtol=1e-6)
  # no gradient reaches the old model's logits
  g = jax.grad(lambda o: focal_distillation(NEW, o, LABELS, fd))(OLD)
  assert not np.any(np.asarray(g))


@pytest.mark.parametrize("kw, msg", [(dict(kind="l1"), "fd.kind"), (dict(beta=-1.0), "fd.beta"),
                                     (dict(temperature=0.0), "fd.temperature")])
def test_focal_distillation_settings_are_checked(kw, msg):
  with pytest.raises(ConfigError, match=msg):
    FocalDistillation(**kw).check()


@pytest.mark.slow
def test_train_exact_resumes_bit_identical(tmp_path):
  from regnas_jax import spaces
  from regnas_jax.nn import OFAMobileNetV3

  sp = spaces.OFAMobileNetV3Space(width_mult=0.25, stem="small", num_classes=10,
                                  resolutions=(8,), depth_choices=(1, 2))
  module = OFAMobileNetV3(sp, depthwise_impl="xla").exact_module(sp.min_arch())
  cfg = ml_collections.ConfigDict({"train": train_defaults(), "data": {"name": "digits"}})
  cfg.train.update(dict(steps=6, batch_size=16, checkpoint_every=3, log_every=3, lr=0.05))
  ds = data.load_digits(8)
  teacher = (module, module.init(jax.random.key(9), np.zeros((1, 8, 8, 3)), train=False))
  kw = dict(resolution=8, seed=3, teacher=teacher, fd=FocalDistillation(beta=2.0))
  full = training.train_exact(cfg, module, ds, str(tmp_path / "a"), **kw)
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "6")        # what a kill after step 3 leaves
  again = training.train_exact(cfg, module, ds, str(tmp_path / "b"), **kw)
  assert again.fingerprint == full.fingerprint
  ok = training.evaluate_exact(module, full.variables, ds, "test", 8)
  assert ok.shape == (len(ds.test),) and ok.dtype == bool
  lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2 and all('"fd"' in ln for ln in lines)
  assert os.path.isdir(tmp_path / "b" / "checkpoints" / "6")


def test_the_old_model_sees_the_batch_at_its_own_resolution(tmp_path):
  """Focal distillation across resolutions (A1 at 6 px, A2 at 8 px): the old model is a dense
  layer over its flattened 6 px input, so it only runs on batches at its own side; the
  distillation term is then its KL to the new model, positive, and part of the run's identity."""
  import flax
  import flax.linen as nn
  from regnas_jax import spaces
  from regnas_jax.errors import StateError
  from regnas_jax.nn import OFAMobileNetV3

  class Flat(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(10)(x.reshape(x.shape[0], -1))

  sp = spaces.OFAMobileNetV3Space(width_mult=0.25, stem="small", num_classes=10,
                                  resolutions=(8,), depth_choices=(1, 2))
  module = OFAMobileNetV3(sp, depthwise_impl="xla").exact_module(sp.min_arch())
  old = Flat()
  teacher = (old, old.init(jax.random.key(1), np.zeros((1, 6, 6, 3))))
  cfg = ml_collections.ConfigDict({"train": train_defaults(), "data": {"name": "digits"}})
  cfg.train.update(dict(steps=2, batch_size=16, checkpoint_every=2, log_every=1, lr=0.05))
  ds = data.load_digits(8)
  kw = dict(resolution=8, seed=3, teacher=teacher, fd=FocalDistillation(beta=2.0))
  with pytest.raises(flax.errors.ScopeParamShapeError):   # fed at 8 px, the old one cannot run
    training.train_exact(cfg, module, ds, str(tmp_path / "a"), **kw)
  training.train_exact(cfg, module, ds, str(tmp_path / "b"), teacher_resolution=6, **kw)
  lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2 and all(float(__import__("json").loads(ln)["fd"]) > 0 for ln in lines)
  with pytest.raises(StateError):  # the teacher's side is part of what the weights depend on
    training.train_exact(cfg, module, ds, str(tmp_path / "b"), teacher_resolution=5, **kw)


def test_trained_weights_keep_the_fingerprint_of_the_identity_they_were_saved_with(tmp_path):
  """A finished run is restored, not retrained, and fingerprinted with the identity saved with
  its checkpoint -- also one in the form of version 1 (no schema), so the search states that
  hold the fingerprint of such weights stay valid."""
  import flax.linen as nn

  from regnas_jax import persist

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.BatchNorm(use_running_average=not train)(x.reshape(x.shape[0], -1))
      return nn.Dense(10)(x)

  cfg = ml_collections.ConfigDict({"train": train_defaults(), "data": {"name": "digits"}})
  cfg.train.update(dict(steps=2, batch_size=16, checkpoint_every=2, log_every=1))
  ds = data.load_digits(8)
  first = training.train_exact(cfg, Tiny(), ds, str(tmp_path), resolution=8, seed=3)
  meta = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
  saved = json.loads(meta.read_text())
  v1 = {k: v for k, v in saved["identity"].items() if k not in ("schema", "teacher_resolution")}
  meta.write_text(json.dumps(dict(saved, identity=v1)))
  logs = []
  again = training.train_exact(cfg, Tiny(), ds, str(tmp_path), resolution=8, seed=3,
                               log=logs.append)
  arrays = persist.array_fingerprint(again.variables)
  assert arrays == persist.array_fingerprint(first.variables) and not logs
  assert again.fingerprint == persist.fingerprint({"training": v1, "arrays": arrays})
  assert first.fingerprint == persist.fingerprint({"training": saved["identity"],
                                                   "arrays": arrays}) != again.fingerprint
