"""OFA-MobileNetV3 search space: layout, sampling, variation, contains, costs, JSON layout.

JSON round trips, error messages, validation and inclusion are contract tests
(``test_contract_spaces.py``)."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.spaces import InvalidSpaceError, MBV3Arch, OFAMobileNetV3Space, get_space, member

SPACE = OFAMobileNetV3Space(num_classes=1000)


def np_arch(a):
  return jax.tree.map(np.asarray, a)


def test_layout_matches_ofa():
  sp = OFAMobileNetV3Space()
  assert sp.widths == (16, 16, 24, 40, 80, 112, 160, 960, 1280)
  assert OFAMobileNetV3Space(width_mult=1.2).widths == (24, 24, 32, 48, 96, 136, 192, 1152, 1536)
  assert [b.stride for b in sp.blocks][::4] == [2, 2, 2, 1, 2]
  assert [b.se for b in sp.blocks][::4] == [False, True, False, True, True]
  assert [b.act for b in sp.blocks][::4] == ["relu", "relu", "h_swish", "h_swish", "h_swish"]
  assert sp.blocks[0].mid_choices == (48, 64, 96)          # 16 in-channels x {3, 4, 6}
  assert sp.blocks[4].mid_choices == (72, 96, 144)
  assert sp.blocks[4].se_choices == (24, 24, 40)           # make_divisible(mid // 4, 8)
  assert not sp.blocks[0].residual and sp.blocks[1].residual
  # OFA: 7371 networks per stage, (7371)^5 ~ 2.2e19 per resolution.
  assert sp.num_archs() == 7371 ** 5
  small = OFAMobileNetV3Space(stem="small")
  assert small.stem_stride == 1 and small.stage_strides == (1, 2, 2, 1, 2)
  assert small.resolutions == (24, 28, 32)


@pytest.mark.parametrize("n", [None, 7])
def test_sample_shapes_and_ranges(n):
  pop = SPACE.sample(jax.random.key(0), n)
  lead = () if n is None else (n,)
  for f in SPACE.fields():
    x = np.asarray(getattr(pop, f.name))
    assert x.shape == lead + f.shape and x.dtype == np.int32
    assert x.min() >= 0 and x.max() < f.size
  SPACE.validate(pop)


def test_sample_is_uniform_and_deterministic():
  pop = np_arch(SPACE.sample(jax.random.key(1), 3000))
  counts = np.bincount(pop.kernel.ravel(), minlength=3) / pop.kernel.size
  np.testing.assert_allclose(counts, 1 / 3, atol=0.01)
  again = np_arch(SPACE.sample(jax.random.key(1), 3000))
  assert all(np.array_equal(a, b) for a, b in zip(pop, again))


def test_min_max_and_contains_order():
  mn, mx = np_arch(SPACE.min_arch()), np_arch(SPACE.max_arch())
  pop = np_arch(SPACE.sample(jax.random.key(2), 200))
  assert np.all(SPACE.contains(mx, pop)) and np.all(SPACE.contains(pop, mn))
  assert np.all(SPACE.contains(pop, pop))                      # reflexive
  assert not SPACE.contains(mn, mx)
  # jitted / vmapped contains agrees with the numpy path
  jit_c = jax.jit(jax.vmap(SPACE.contains, in_axes=(0, None)))(pop, member(pop, 0))
  np.testing.assert_array_equal(np.asarray(jit_c), SPACE.contains(pop, member(pop, 0)))


def test_contains_ignores_unused_blocks_and_resolution():
  a = np_arch(SPACE.sample(jax.random.key(3)))
  a = a._replace(depth=np.zeros(5, np.int32))               # depth 2 everywhere
  b = a._replace(kernel=a.kernel.copy(), resolution=np.int32((a.resolution + 1) % 7))
  b.kernel[3] = 0 if a.kernel[3] else 2                     # block 4 of stage 1: unused by both
  assert SPACE.contains(a, b) and SPACE.contains(b, a)
  c = a._replace(kernel=a.kernel.copy())
  c.kernel[0] = a.kernel[0] + 1 if a.kernel[0] < 2 else a.kernel[0] - 1   # used block differs
  assert SPACE.contains(a, c) != SPACE.contains(c, a)


def test_contains_is_transitive_and_matches_brute_force():
  """contains == 'every choice >= on blocks small uses', checked element by element."""
  rng = np.random.default_rng(0)
  pop = np_arch(SPACE.sample(jax.random.key(4), 60))
  # bias towards contained pairs: upgrade random members
  ups = [np.minimum(x + rng.integers(0, 2, x.shape), f.size - 1).astype(np.int32)
         for x, f in zip(pop, SPACE.fields())]
  bigs = MBV3Arch(*ups)
  for i in range(60):
    small, big = member(pop, i), member(bigs, i)
    for x, y in ((big, small), (small, big), (member(pop, (i + 1) % 60), small)):
      d_x = np.array(SPACE.depth_choices)[x.depth]
      d_y = np.array(SPACE.depth_choices)[y.depth]
      want = all(d_x[s] >= d_y[s] for s in range(5)) and all(
          x.kernel[s * 4 + j] >= y.kernel[s * 4 + j] and x.expand[s * 4 + j] >= y.expand[s * 4 + j]
          for s in range(5) for j in range(d_y[s]))
      assert bool(SPACE.contains(x, y)) == want
    assert SPACE.contains(big, small)


def test_mutate():
  a = SPACE.sample(jax.random.key(5))
  same = SPACE.mutate(jax.random.key(6), a, prob=0.0, resolution_prob=0.0)
  assert all(np.array_equal(x, y) for x, y in zip(a, same))
  muts = jax.vmap(lambda k: SPACE.mutate(k, a, prob=0.5))(jax.random.split(jax.random.key(7), 400))
  SPACE.validate(muts)
  # Each block resamples (kernel, expand) together with probability 0.5; a resample keeps the
  # old pair with probability 1/9, so a block changes with probability 0.5 * 8 / 9.
  changed = np.asarray((muts.kernel != a.kernel) | (muts.expand != a.expand)).mean()
  assert abs(changed - 0.5 * 8 / 9) < 0.03
  d_changed = np.asarray(muts.depth != a.depth).mean()
  assert abs(d_changed - 0.5 * 2 / 3) < 0.04


def test_crossover_takes_each_gene_from_a_parent():
  a, b = SPACE.sample(jax.random.key(8)), SPACE.sample(jax.random.key(9))
  kids = jax.vmap(lambda k: SPACE.crossover(k, a, b))(jax.random.split(jax.random.key(10), 200))
  for x, y, z in zip(a, b, kids):
    assert np.all((np.asarray(z) == np.asarray(x)) | (np.asarray(z) == np.asarray(y)))
  differ = np.asarray(a.kernel != b.kernel)
  from_a = (np.asarray(kids.kernel) == np.asarray(a.kernel))[:, differ].mean()
  assert abs(from_a - 0.5) < 0.05


def test_macs_params_exact_numpy_vs_traced_and_monotone():
  pop = SPACE.sample(jax.random.key(11), 50)
  exact_m, exact_p = SPACE.macs(pop), SPACE.params(pop)
  assert exact_m.dtype == np.int64
  traced_m = jax.jit(jax.vmap(SPACE.macs))(pop)
  traced_p = jax.jit(jax.vmap(SPACE.params))(pop)
  np.testing.assert_allclose(np.asarray(traced_m), exact_m, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(traced_p), exact_p, rtol=1e-6)
  for i, j in itertools.product(range(10), range(10)):
    a, b = member(pop, i), member(pop, j)
    b = b._replace(resolution=a.resolution)
    if SPACE.contains(a, b):
      assert SPACE.macs(a) >= SPACE.macs(b) and SPACE.params(a) >= SPACE.params(b)
  # resolution only changes MACs
  a = np_arch(member(pop, 0))
  lo, hi = a._replace(resolution=np.int32(0)), a._replace(resolution=np.int32(6))
  assert SPACE.macs(hi) > SPACE.macs(lo) and SPACE.params(hi) == SPACE.params(lo)


def test_canonicalize():
  pop = SPACE.sample(jax.random.key(12), 20)
  can = SPACE.canonicalize(pop)
  np.testing.assert_array_equal(SPACE.macs(can), SPACE.macs(pop))
  assert np.all(SPACE.contains(can, pop)) and np.all(SPACE.contains(pop, can))
  act = SPACE.block_active(pop)
  assert np.all(np.asarray(can.kernel)[~act] == 0)


def test_json_layout():
  """The readable form lists per stage its depth and the choices of the blocks it uses (the
  round trip and error messages are contract tests)."""
  j = SPACE.arch_to_dict(SPACE.max_arch())
  assert j["resolution"] == 224
  assert j["stages"][0] == {"depth": 4, "kernel": [7, 7, 7, 7], "expand": [6, 6, 6, 6]}
  j = SPACE.arch_to_dict(SPACE.min_arch())
  assert j["stages"][4] == {"depth": 2, "kernel": [3, 3], "expand": [3, 3]}


def test_space_config_errors():
  with pytest.raises(InvalidSpaceError, match="kernel_choices: kernel sizes must be odd"):
    OFAMobileNetV3Space(kernel_choices=(3, 4))
  with pytest.raises(InvalidSpaceError, match="strictly ascending"):
    OFAMobileNetV3Space(expand_choices=(6, 3))
  with pytest.raises(InvalidSpaceError, match="stem: 'cifar'"):
    OFAMobileNetV3Space(stem="cifar")
  with pytest.raises(InvalidSpaceError, match="unknown search space 'nope'"):
    get_space("nope")
  with pytest.raises(InvalidSpaceError, match="unexpected keyword"):
    get_space("ofa_mbv3", kernel=3)
  sp = get_space("ofa_mbv3", stem="small", num_classes=10)
  assert sp.config()["stem"] == "small" and json.dumps(sp.config())


def test_traced_costs_under_jit_match_for_population():
  sp = OFAMobileNetV3Space(stem="small", num_classes=10)
  pop = sp.sample(jax.random.key(14), 16)
  np.testing.assert_allclose(np.asarray(jax.jit(sp.macs)(pop)), sp.macs(pop), rtol=1e-6)
  assert jnp.asarray(jax.jit(sp.contains)(pop, pop)).all()
