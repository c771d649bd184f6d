"""The grain input pipeline: batches by step (== the in-memory path), resume mid-epoch, per-host
shards, Inception crops, on-demand JPEG decoding, config checks and the identity."""

import glob
import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

import helpers

from regnas_jax import data, identity, spaces
from regnas_jax.data import pipeline
from regnas_jax.defaults import data_defaults, input_defaults, train_defaults
from regnas_jax.training import supernet as train_sn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR = helpers.CIFAR10_NPZ


@pytest.fixture(scope="module")
def digits():
  return data.load_digits(8, seed=0)


def _drain(tb, k):
  return [tb.next() for _ in range(k)]


def _same(a, b):
  assert [s for s, _ in a] == [s for s, _ in b]
  for (_, x), (_, y) in zip(a, b):
    np.testing.assert_array_equal(x["images"], y["images"])
    np.testing.assert_array_equal(x["labels"], y["labels"])


def test_batches_equal_the_in_memory_order_and_resume_mid_epoch(digits):
  n, b = len(digits.train), 64   # 17 batches per epoch: steps 10..30 cross an epoch
  maker = pipeline.BatchMaker(digits.train, b, 3)
  tb = pipeline.TrainBatches(maker, 10, 30, prefetch=2)
  first = _drain(tb, 5)
  saved = tb.state()
  rest = _drain(tb, 15)
  with pytest.raises(StopIteration):
    tb.next()
  tb.close()
  for s, batch in first + rest:   # exactly what the in-memory path reads
    x, y = digits.train.get(data.epoch_batch_indices(n, b, s, 3))
    np.testing.assert_array_equal(batch["images"], x)
    np.testing.assert_array_equal(batch["labels"], y)
  assert [s for s, _ in first + rest] == list(range(10, 30))
  # A new iterator restored from the saved state, and one started at the step, continue alike.
  again = pipeline.TrainBatches(maker, 0, 30, state=saved)
  _same(_drain(again, 15), rest)
  again.close()
  at_step = pipeline.TrainBatches(maker, 15, 30, prefetch=0)
  _same(_drain(at_step, 15), rest)
  at_step.close()


def test_worker_processes_give_the_same_batches_and_state(digits):
  maker = pipeline.BatchMaker(digits.train, 32, 0)
  want = pipeline.TrainBatches(maker, 0, 12, prefetch=0)
  ref = _drain(want, 12)
  want.close()
  tb = pipeline.TrainBatches(maker, 0, 12, workers=2, prefetch=2)
  got = _drain(tb, 5)
  saved = tb.state()
  tb.close()
  _same(got, ref[:5])
  resumed = pipeline.TrainBatches(maker, 0, 12, workers=2, state=saved)
  _same(_drain(resumed, 7), ref[5:])
  resumed.close()


@pytest.mark.parametrize("augment", ["pad_crop", "inception"])
def test_host_shards_are_disjoint_cover_the_global_batch_and_keep_it(digits, augment):
  b, step = 24, 40
  one = pipeline.BatchMaker(digits.train, b, 1, augment, (12, 16))
  whole = one(step)
  for p_count in (2, 3, 4):
    parts = [pipeline.BatchMaker(digits.train, b, 1, augment, (12, 16), p, p_count)
             for p in range(p_count)]
    idx = [m.indices(step) for m in parts]
    flat = np.concatenate(idx)
    assert len(set(flat.tolist())) == b   # disjoint
    np.testing.assert_array_equal(flat, one.indices(step))   # covering, in order
    shards = [m(step) for m in parts]
    np.testing.assert_array_equal(np.concatenate([s["images"] for s in shards]), whole["images"])
    np.testing.assert_array_equal(np.concatenate([s["labels"] for s in shards]), whole["labels"])
  with pytest.raises(data.DataError, match="batch_size: 24 is not divisible by the 5 hosts"):
    pipeline.BatchMaker(digits.train, b, 1, process_index=0, process_count=5)(0)


def test_inception_box_follows_the_reference_rules():
  rng = np.random.default_rng(0)
  fracs, ratios = [], []
  for _ in range(2000):
    top, left, ch, cw = pipeline.inception_box(60, 90, rng)
    assert 0 <= top and top + ch <= 60 and 0 <= left and left + cw <= 90
    fracs.append(ch * cw / (60 * 90))
    ratios.append(cw / ch)
  # Rounding to whole pixels moves area and ratio a little past the bounds; on a 3:2 image the
  # largest box with a ratio <= 4/3 is 60 x 80 (8/9 of the area).
  assert 0.07 < min(fracs) < 0.12 and 0.85 < max(fracs) <= 60 * 81 / 5400
  assert min(ratios) > 0.72 and max(ratios) < 1.38
  # Accepted areas are uniform draws that fit (large ones with extreme ratios do not).
  assert 0.3 < np.mean(fracs) < 0.55
  # No try fits (tries=0): the largest centred box with the ratio clipped into [3/4, 4/3].
  assert pipeline.inception_box(100, 20, rng, tries=0) == (36, 0, 27, 20)    # tall: 20 x 27
  assert pipeline.inception_box(20, 100, rng, tries=0) == (0, 36, 20, 27)    # wide
  assert pipeline.inception_box(30, 36, rng, tries=0) == (0, 0, 30, 36)      # ratio inside


def test_inception_crop_is_the_box_resized_and_maybe_flipped():
  img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
  flips = 0
  for seed in range(40):
    got = pipeline.inception_crop(img, 16, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)   # the same draws, in the documented order
    top, left, ch, cw = pipeline.inception_box(40, 50, rng)
    want = np.asarray(Image.fromarray(img[top:top + ch, left:left + cw]).resize(
        (16, 16), Image.BILINEAR))
    flip = rng.random() < 0.5
    flips += flip
    np.testing.assert_array_equal(got, want[:, ::-1] if flip else want)
  assert 10 < flips < 30


def test_inception_batches_are_deterministic_per_step(digits):
  m = pipeline.BatchMaker(digits.train, 16, 5, "inception", (12, 16))
  a, b = m(7), m(7)
  np.testing.assert_array_equal(a["images"], b["images"])
  r = pipeline.step_resolution(5, (12, 16), 7)
  assert a["images"].shape == (16, r, r, 3) and a["images"].dtype == np.uint8
  other = pipeline.BatchMaker(digits.train, 16, 6, "inception", (12, 16))(7)
  assert not np.array_equal(other["labels"], a["labels"])


def test_on_demand_decoding_equals_decoding_once(tmp_path):
  path = str(tmp_path / "p.npz")
  arrays, pixels = helpers.packed_npz(path, n_train=6, n_test=6)
  lazy = data.load_cifar10_npz(path, val_size=2, decode="on_demand")
  once = data.load_cifar10_npz(path, val_size=2)
  for split in ("train", "val", "test"):
    a, b = getattr(lazy, split), getattr(once, split)
    x, y = a.get(np.arange(len(a)))
    np.testing.assert_array_equal(x, b.images)
    np.testing.assert_array_equal(y, b.labels)
  np.testing.assert_array_equal(lazy.test.get(np.arange(6))[0], pixels["test"])
  img, lab = lazy.train.raw(1)
  tr, _ = data.holdout_split(6, 2, 0)
  np.testing.assert_array_equal(img, pixels["train"][tr[1]])
  assert lab == arrays["train_labels"][tr[1]] and lazy.image_size == 8
  with pytest.raises(data.DataError, match="config.input.decode: 'lazy' is not one of"):
    data.load_cifar10_npz(path, decode="lazy")


@pytest.mark.skipif(not os.path.isfile(CIFAR), reason=f"no packed CIFAR-10 file at {CIFAR}")
def test_real_cifar10_file_on_demand_matches_pil():
  src = data.PackedJpegSource(CIFAR, "test")
  z = np.load(CIFAR, allow_pickle=False)
  off, blob = z["test_offsets"], z["test_jpeg"]
  idx = np.random.default_rng(0).choice(len(src), 300, replace=False)
  x, y = src.get(idx)
  want = np.stack([np.asarray(Image.open(io.BytesIO(blob[off[i]:off[i + 1]].tobytes()))
                              .convert("RGB")) for i in idx])
  np.testing.assert_array_equal(x, want)
  np.testing.assert_array_equal(y, z["test_labels"][idx])
  assert len(src) == 10000 and x.shape == (300, 32, 32, 3)


def _cfg(**input_values):
  c = ml_collections.ConfigDict(dict(seed=0, train=train_defaults("digits"),
                                     data=data_defaults("digits"), input=input_defaults()))
  c.input.update(input_values)
  return c


def test_config_checks_are_one_line_data_errors():
  with pytest.raises(data.DataError, match=r"config.input.workers: must be an integer >= 0, got -1"):
    pipeline.settings(_cfg(workers=-1))
  with pytest.raises(data.DataError, match="config.input.pipeline: 'tf' is not one of"):
    pipeline.settings(_cfg(pipeline="tf"))
  with pytest.raises(data.DataError, match="config.input.augment: 'autoaugment' is not one of"):
    pipeline.settings(_cfg(augment="autoaugment"))
  assert not pipeline.uses_grain(_cfg())
  assert pipeline.uses_grain(_cfg(workers=2)) and pipeline.uses_grain(_cfg(augment="inception"))
  assert pipeline.uses_grain(_cfg(pipeline="grain"))
  assert not pipeline.uses_grain(_cfg(pipeline="memory", workers=2))


def _configs():
  """(name, variant) of every config file and its variants."""
  import importlib.util

  out = []
  for f in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    name = os.path.basename(f)[:-3]
    if name == "__init__":
      continue
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for variant in (None, "smoke", "cpu", "s2", "enlarged"):
      try:
        out.append((name, variant, mod.get_config(variant)))
      except ValueError:
        pass
  return out


def test_every_config_has_the_input_section_and_only_augment_enters_the_identity():
  """Every config has the section at its defaults; of it only ``augment`` (which changes the
  trained weights) enters the training identity, and a config without the section reads as
  the defaults."""
  seen = 0
  for name, variant, cfg in _configs():
    assert "input" in cfg, (name, variant)
    assert cfg.input.to_dict() == input_defaults().to_dict(), (name, variant)
    seen += 1
    if cfg.search.algorithm != "tunas" and cfg.train.steps:
      cfg_sn = cfg
  assert seen >= 10
  cfg = cfg_sn
  sp = spaces.get_space(**cfg.space.to_dict())
  phases = train_sn.build_phases(cfg.train, sp)

  def ident(c):
    return identity.supernet(c, sp, phases, augment=pipeline.settings(c)["augment"])

  base = ident(cfg)
  assert base["input"] == {"augment": "pad_crop"}
  assert ident(ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != "input"})) == base
  cfg.input.update(dict(workers=2, pipeline="grain", prefetch=8, decode="on_demand"))
  assert ident(cfg) == base
  cfg.input.augment = "inception"
  assert ident(cfg) == dict(base, input={"augment": "inception"})
