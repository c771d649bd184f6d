"""Population scoring: vmapped, chunked and member-by-member agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import evaluate
from regnas_jax.spaces import member


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)


# The tests below share shapes where they can (3 members, 7 images, 2 calibration batches of 4)
# so that they share compiled programs: every population function compiles per shape.
def images(n, seed):
  return jax.random.normal(jax.random.key(seed), (n, 12, 12, 3))


def calibration(seed, scale=1.0, shift=0.0):
  return jax.random.normal(jax.random.key(seed), (2, 4, 12, 12, 3)) * scale + shift


def test_chunked_equals_vmapped_equals_one_by_one(tiny):
  sp, net, v, x = tiny
  pop = sp.sample(jax.random.key(2), 5)
  full = evaluate.population_logits(net, v, x, pop, train=True)
  close(evaluate.population_logits(net, v, x, pop, train=True, chunk_size=2), full)
  one = jax.jit(lambda a: net.apply(v, x, a, train=True, mutable=["batch_stats"])[0])
  for i in range(5):
    close(full[i], one(member(pop, i)))


def test_member_stats_and_correctness(tiny):
  sp, net, v, _ = tiny
  x = images(7, 1)
  pop = sp.sample(jax.random.key(3), 3)
  stats = jax.tree.map(lambda s: jnp.stack([s, s * 2.0, s + 1.0]), v["batch_stats"])
  vs = {"params": v["params"], "batch_stats": stats}
  per = evaluate.population_logits(net, vs, x, pop, member_stats=True)
  one = jax.jit(lambda vi, a: net.apply(vi, x, a))
  for i in range(3):
    close(per[i], one({"params": v["params"], "batch_stats": member(stats, i)}, member(pop, i)))
  labels = np.asarray(jnp.argmax(per[1], -1))
  correct = evaluate.population_correct(net, vs, x, labels, pop, member_stats=True)
  assert correct.shape == (3, 7) and correct[1].all()


def test_bn_recalibration_equals_exact_average_on_extracted_subnets(tiny):
  """Per-member re-calibration == averaging flax BatchNorm batch statistics of the extracted
  exact-shape model over the calibration batches; vmapped == chunked (in padded blocks)."""
  sp, net, v, _ = tiny
  calib = calibration(7, 1.5, 0.3)
  pop = jax.tree.map(lambda a, r: jnp.concatenate([a[None], r]), sp.min_arch(),
                     sp.sample(jax.random.key(8), 2))   # the min arch and random ones
  stats = evaluate.recalibrate_bn(net, v, calib, pop)
  chunked = evaluate.recalibrate_population(net, v, calib, pop, block_size=2, chunk_size=1)
  jax.tree.map(close, stats, chunked)
  x = images(7, 9)
  logits = evaluate.population_logits(net, {"params": v["params"], "batch_stats": stats}, x, pop,
                                      member_stats=True)
  for i in range(2):
    exact, ev = net.extract(v, member(pop, i))
    batch_stats = jax.jit(lambda c, ev=ev, m=exact.clone(bn_momentum=0.0): jax.vmap(
        lambda xb: m.apply(ev, xb, train=True, mutable=["batch_stats"])[1]["batch_stats"])(c))
    avg = jax.tree.map(lambda s: s.mean(0), batch_stats(calib))
    predict = jax.jit(lambda stats, exact=exact, ev=ev: exact.apply(
        {"params": ev["params"], "batch_stats": stats}, x, train=False))
    ref = predict(avg)
    close(logits[i], ref)
    assert not np.allclose(np.asarray(ref), np.asarray(predict(ev["batch_stats"])), atol=1e-3)


def test_scoring_in_member_blocks_and_image_batches_equals_one_call(tiny):
  """Populations run in padded member blocks and images in padded batches give exactly the
  one-call results (re-calibrated statistics, predictions, correctness)."""
  sp, net, v, _ = tiny
  calib = calibration(4)
  x = np.asarray(images(7, 5))
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(6), 3))
  full = evaluate.recalibrate_bn(net, v, calib, pop)
  blocked = evaluate.recalibrate_population(net, v, calib, pop, block_size=2, chunk_size=1)
  jax.tree.map(close, full, blocked)
  logits = evaluate.population_logits(net, {"params": v["params"], "batch_stats": full}, x, pop,
                                      member_stats=True)
  want = np.asarray(jnp.argmax(logits, -1))
  pred = evaluate.population_predictions(net, v["params"], blocked, pop, x, block_size=2,
                                         chunk_size=1, batch_size=3)
  assert pred.shape == (3, 7) and pred.dtype == np.int32
  np.testing.assert_array_equal(pred, want)
  labels = want[0]
  ok = evaluate.score_population(net, v, pop, calib, x, labels, batch_size=3, block_size=2,
                                 chunk_size=1)
  assert ok.shape == (3, 7) and ok[0].all()
  np.testing.assert_array_equal(ok, want == labels[None])


def test_scorer_streams_the_split_with_the_whole_split_results(tiny):
  """Scorer.correct (uint8 split streamed in padded batches, normalised per batch) equals the
  previous computation: the whole split normalised at once, then population_predictions."""
  import ml_collections

  from regnas_jax import data

  sp, net, v, _ = tiny
  ds = data.load_digits(12, seed=0)
  score = ml_collections.ConfigDict(dict(block_size=2, chunk_size=1, batch_size=128,
                                         max_images=300))
  sc = evaluate.Scorer(net, sp, v, ds, score, calib_images=64, calib_batch_size=32, seed=0)
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(6), 3))
  got = sc.correct(pop, "test")
  x, y = data.eval_images(sc.source("test"), 12, ds.mean, ds.std)   # the whole split
  assert x.shape == (300, 12, 12, 3)
  st = evaluate.recalibrate_population(net, sc.variables, sc.calib(12), pop, block_size=2,
                                       chunk_size=1)
  pred = evaluate.population_predictions(net, sc.variables["params"], st, pop, jax.device_put(x),
                                         block_size=2, chunk_size=1, batch_size=128)
  np.testing.assert_array_equal(got, pred == y[None])
  np.testing.assert_array_equal(sc.labels("test"), y)
  assert 0 < got.sum() < got.size


def test_scorer_in_switch_mode_equals_the_largest_shapes(tiny):
  """Scorer with ``score.switch`` (members one at a time, each block running its chosen
  branch): the same statistics and correctness as every member masked at the largest shapes,
  for a population and a later sub-population."""
  import ml_collections

  from regnas_jax import data

  sp, net, v, _ = tiny
  ds = data.load_digits(12, seed=0)
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(6), 11))
  pop = jax.tree.map(lambda a, b: np.concatenate([np.asarray(a)[None], b]), sp.min_arch(), pop)
  out = {}
  for switch in (False, True):
    score = ml_collections.ConfigDict(dict(block_size=2, chunk_size=1, batch_size=128,
                                           max_images=200, switch=switch))
    sc = evaluate.Scorer(net, sp, v, ds, score, calib_images=64, calib_batch_size=32, seed=0)
    assert sc.member_net.switch == switch
    out[switch] = sc, sc.stats(pop), sc.correct(pop, "test")
  (_, s0, c0), (sc, s_sw, c_sw) = out[False], out[True]
  jax.tree.map(close, s_sw, s0)
  np.testing.assert_array_equal(c_sw, c0)
  sub = jax.tree.map(lambda x: np.asarray(x)[[3, 0, 5]], pop)
  np.testing.assert_array_equal(sc.correct(sub, "test"), c0[[3, 0, 5]])


def test_scoring_refuses_members_of_another_resolution(tiny):
  """Each host scoring call checks its population against the images (a jitted call cannot
  read a traced population): members of 16 px with 12 px images, all or one of them, are a
  ``ValueError`` naming both sizes, before anything compiles."""
  import dataclasses

  sp, net, v, _ = tiny
  sp2 = dataclasses.replace(sp, resolutions=(12, 16))
  net2 = net.clone(space=sp2)
  pop = jax.tree.map(np.asarray, sp2.sample(jax.random.key(2), 3))
  pop16, pop12 = sp2.at_resolution(pop, 16), sp2.at_resolution(pop, 12)
  calib, x = calibration(7, 1.5, 0.3), np.asarray(images(7, 9))
  stats = jax.tree.map(lambda s: np.stack([s] * 3), v["batch_stats"])
  msg = r"{}: the arch's resolution is 16 px \(index 1 of \(12, 16\)\) but the images are 12 px"
  with pytest.raises(ValueError, match=msg.format("recalibrate_population")):
    evaluate.recalibrate_population(net2, v, calib, pop16)
  with pytest.raises(ValueError, match=msg.format("population_predictions")):
    evaluate.population_predictions(net2, v["params"], stats, pop16, x)
  with pytest.raises(ValueError, match=msg.format("streamed_predictions")):
    evaluate.streamed_predictions(net2, v["params"], stats, pop16, [(0, 7, x, None)], 7)
  mixed = jax.tree.map(lambda a, b: np.concatenate([a, b[:1]]), pop12, pop16)
  with pytest.raises(ValueError, match=msg.format("recalibrate_population")):
    evaluate.score_population(net2, v, mixed, calib, x, np.zeros(7, np.int32))
