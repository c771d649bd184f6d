"""SCARLET S1/S2 search spaces: layout, published reference points, variation, contains.

JSON round trips, error messages, validation and inclusion are contract tests
(``test_contract_spaces.py``)."""

import jax
import numpy as np
import pytest

from regnas_jax.spaces import (InvalidArchError, InvalidSpaceError, ScarletArch, ScarletS1Space,
                               ScarletS2Space, get_space)

S1, S2 = ScarletS1Space(), ScarletS2Space()


def named(sp, layers, res=0):
  return sp.arch_from_dict({"resolution": sp.resolutions[res], "layers": layers})


def test_layout_and_choices():
  widths = [32, 32] + [40] * 4 + [80] * 4 + [96] * 4 + [192] * 4 + [320]
  assert [b.out_ch for b in S1.layers] == widths
  assert [i for i, b in enumerate(S1.layers) if b.stride == 2] == [0, 2, 6, 14]
  # residual where the stride is 1 and the width is kept: 13 of the 19 layers
  assert [i for i, b in enumerate(S1.layers) if not b.residual] == [0, 2, 6, 10, 14, 18]
  assert S1.layers[1].mid_choices == (96, 192) and S1.layers[1].se_choices == (24, 48)
  assert S1.op_names == ("skip", "e3_k3", "e3_k5", "e3_k7", "e6_k3", "e6_k5", "e6_k7")
  assert len(S2.op_names) == 13 and S2.op_names[7:] == tuple(n + "_se" for n in S1.op_names[1:])
  assert S1.num_archs() == 7 ** 19 and S2.num_archs() == 13 ** 19
  small = ScarletS1Space(stem="small")
  assert small.stem_stride == 1 and small.layers[0].stride == 1 and small.resolutions == (32,)
  # SCARLET's numbering of the bottlenecks (seed: o = (x - 3) + (y - 3) / 2) is ours minus one
  for o, (e, k) in enumerate([(3, 3), (3, 5), (3, 7), (6, 3), (6, 5), (6, 7)]):
    skip, ei, ki, se = (int(v[0]) for v in S1.decode(named(S1, [S1.op_names[o + 1]] * 19)))
    assert (skip, S1.expand_choices[ei], S1.kernel_choices[ki], se) == (0, e, k, 0)


def test_published_reference_points_at_224():
  """Table 2 of SCARLET-NAS's supplementary (all identity: 23 M, all K7E6: 557 M) and
  SCARLET-A's published 365 M MACs / 6.7 M parameters (its released model definition, in S2)."""
  assert S1.macs(S1.min_arch()) / 1e6 == pytest.approx(23, abs=0.5)
  assert S1.macs(S1.max_arch()) / 1e6 == pytest.approx(557, abs=0.5)
  scarlet_a = ["e3_k7", "e6_k5", "e3_k5", "e3_k7_se", "e6_k3_se", "e3_k5_se", "e6_k3_se",
               "e3_k3", "e3_k7_se", "e3_k7", "e3_k5", "e3_k7_se", "e3_k3", "e3_k7_se",
               "e6_k3_se", "e6_k5_se", "e3_k3_se", "e6_k3_se", "e6_k7_se"]
  a = named(S2, scarlet_a)
  assert S2.macs(a) / 1e6 == pytest.approx(365, abs=0.5)
  assert S2.params(a) / 1e6 == pytest.approx(6.7, abs=0.05)


def test_costs_under_jit_equal_exact_costs_and_els_adds_shortcut_convs():
  pop = S2.sample(jax.random.key(0), 64)
  pop = pop._replace(op=np.where(np.random.default_rng(0).random(pop.op.shape) < 0.4, 0, pop.op))
  for f in (S2.macs, S2.params):
    exact = np.asarray(f(jax.tree.map(np.asarray, pop)))
    np.testing.assert_allclose(np.asarray(jax.jit(f)(pop)), exact, rtol=1e-6)
  plain = ScarletS2Space(els=False)
  extra = np.asarray(S2.macs(pop)) - np.asarray(plain.macs(pop))
  assert np.all(extra >= 0) and np.any(extra > 0)
  # a skip before a residual bottleneck: with ELS that bottleneck's shortcut is a 1x1 conv
  ops = ["e3_k3"] * 19
  ops[3] = "skip"  # layer 5 (index 4) is residual, 40 -> 40 at 28x28
  a = named(S1, ops)
  assert S1.macs(a) - ScarletS1Space(els=False).macs(a) == 28 * 28 * 40 * 40


def test_sample_mutate_crossover_stay_valid_and_are_deterministic():
  pop = S2.sample(jax.random.key(0), 2000)
  S2.validate(pop, population=True)
  counts = np.bincount(np.asarray(pop.op).ravel(), minlength=13) / pop.op.size
  np.testing.assert_allclose(counts, 1 / 13, atol=0.01)   # uniform over the 13 choices
  a, b = jax.tree.map(lambda x: x[0], pop), jax.tree.map(lambda x: x[1], pop)
  m = S2.mutate(jax.random.key(1), a, 0.3)
  S2.validate(m, population=False)
  assert 0 < int((np.asarray(m.op) != np.asarray(a.op)).sum()) < 19
  assert np.array_equal(S2.mutate(jax.random.key(1), a, 0.3).op, m.op)
  c = S2.crossover(jax.random.key(2), a, b)
  assert np.all((np.asarray(c.op) == a.op) | (np.asarray(c.op) == b.op))


def test_contains_and_grow_to_contain():
  rng = np.random.default_rng(0)
  sp = S2
  names = sp.op_names
  for _ in range(200):
    big = ScarletArch(np.int32(0), rng.integers(0, 13, 19).astype(np.int32))
    small = ScarletArch(np.int32(0), rng.integers(0, 13, 19).astype(np.int32))
    # brute force from the readable names
    ok = True
    for x, y in zip(big.op, small.op):
      if names[y] == "skip":
        continue
      if names[x] == "skip":
        ok = False
        break
      ex, kx, ey, ky = (int(v) for v in (names[x][1], names[x][4], names[y][1], names[y][4]))
      ok &= ex >= ey and kx >= ky and (names[x].endswith("_se") or not names[y].endswith("_se"))
    assert bool(sp.contains(big, small)) == ok
    grown = jax.tree.map(np.asarray, sp.grow_to_contain(big, small))
    assert sp.contains(grown, small) and sp.contains(grown, big) == sp.contains(big, big)
    # minimal: layers where small skips keep big's choice
    skip = np.asarray(small.op) == 0
    assert np.array_equal(grown.op[skip], big.op[skip])
  assert sp.contains(sp.max_arch(), sp.min_arch()) and not sp.contains(sp.min_arch(), sp.max_arch())


def test_s1_json_rejects_s2_layers():
  """S1 has no SE variants (the round trip and error messages are contract tests)."""
  with pytest.raises(InvalidArchError, match=r"^layers\[0\]: 'e6_k7_se' is not one of"):
    S1.arch_from_dict(dict(S1.arch_to_dict(S1.max_arch()), layers=["e6_k7_se"] * 19))


def test_space_config_errors_and_registry():
  assert isinstance(get_space("scarlet_s2", els=False), ScarletS2Space)
  for kw, msg in [(dict(kernel_choices=(3, 4)), "kernel sizes must be odd"),
                  (dict(els="yes"), "els: must be true or false"),
                  (dict(stem="tiny"), "stem: 'tiny' is not one of"),
                  (dict(expand_choices=(6, 3)), "strictly ascending")]:
    with pytest.raises(InvalidSpaceError, match=msg):
      ScarletS1Space(**kw)
