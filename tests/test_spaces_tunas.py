"""TuNAS's three search spaces: layout, valid choices, sampling, contains, costs.

JSON round trips, error messages, validation and inclusion are contract tests
(``test_contract_spaces.py``)."""

import jax
import numpy as np
import pytest

from regnas_jax.spaces import InvalidArchError, InvalidSpaceError, get_space, member
from regnas_jax.spaces.tunas import scale_filters

NAMES = ("proxylessnas", "proxylessnas_enlarged", "mobilenet_v3_like")


def test_layouts():
  p = get_space("proxylessnas")
  assert len(p.layers) == 21 and len(p.optional_layers) == 15  # all but each block's first
  assert [b.stride for b in p.layers if b.optional < 0] == [2, 2, 2, 1, 2, 1]
  assert [p.group_widths[b.out_group][0] for b in p.layers][::4] == [32, 40, 80, 96, 192, 320]
  assert p.choices()["expand"] == (3, 6) and p.choices()["se"] == (False,)
  e = get_space("proxylessnas_enlarged")
  distinct = lambda g: sorted(set(e.group_widths[g]))
  # TuNAS's de-duplicated choice sets (scale_filters with base 8).
  assert distinct(0) == [8, 16, 24, 32] and distinct(3) == [16, 24, 32, 40, 48, 64]
  assert distinct(4) == [32, 40, 48, 64, 80, 96, 128] and distinct(8)[-1] == 2048
  v = get_space("mobilenet_v3_like")
  assert len(v.layers) == 20 and len(v.optional_layers) == 15
  assert [b.act for b in v.layers][::4] == ["relu", "relu", "h_swish", "h_swish", "h_swish"]
  assert v.choices()["expand"] == (1, 2, 3, 4, 5, 6) and v.stem_kernels == (3, 5)
  small = get_space("proxylessnas", stem="small")
  assert np.prod([b.stride for b in small.layers]) * small.stem_stride == 8
  assert scale_filters(16, 0.625) == 8 and scale_filters(20, 1.0) == 24


def test_num_archs_counts_distinct_networks():
  p = get_space("proxylessnas")
  assert p.num_archs() == 3 * 6 ** 6 * 7 ** 15
  e = get_space("proxylessnas_enlarged")
  assert e.num_archs() == 3 * 6 ** 6 * 7 ** 15 * 4 ** 3 * 6 * 7 ** 5
  v = get_space("mobilenet_v3_like")
  assert v.num_archs() == 2 * 4 * 36 ** 5 * 37 ** 15 * 4 ** 2 * 6 * 7 ** 5


@pytest.mark.parametrize("name", NAMES[1:])   # the spaces with searched widths
def test_sampling_mutation_and_extremes_use_valid_choices_only(name):
  sp = get_space(name, width_mult=0.25, stem="small", num_classes=10, resolutions=(8, 12))
  masks = sp.choice_mask()
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(0), 3000))
  sp.validate(pop)   # raises on a duplicate width multiplier
  for f in sp.fields():
    x = np.asarray(getattr(pop, f.name)).reshape(3000, -1)
    m = masks[f.name].reshape(-1, f.size)
    for j in range(x.shape[1]):
      counts = np.bincount(x[:, j], minlength=f.size)
      assert np.all((counts > 0) == m[j]), (f.name, j)
      valid = counts[m[j]]   # uniform over the valid choices
      assert np.all(np.abs(valid - 3000 / len(valid)) < 5 * np.sqrt(3000 / len(valid)))
  sp.validate(sp.min_arch())
  sp.validate(sp.max_arch())
  assert np.all(sp.widths(sp.max_arch()) == np.array(sp.max_widths))
  mut = jax.jit(jax.vmap(lambda k, a: sp.mutate(k, a, 0.5)))(jax.random.split(jax.random.key(1), 3000),
                                                              pop)
  sp.validate(mut)
  dup = np.flatnonzero(~masks["filters"][0])   # multipliers rounding to an earlier width
  assert len(dup) == 6   # quarter width: every multiplier of the 16-group gives 8
  if len(dup):
    filters = np.asarray(sp.max_arch().filters).copy()
    filters[0] = dup[0]
    with pytest.raises(InvalidArchError, match=r"filters\[0\]: .* same as a smaller multiplier"):
      sp.validate(sp.max_arch()._replace(filters=filters))


@pytest.mark.parametrize("name", NAMES)
def test_costs_under_jit_equal_exact_and_grow_with_every_choice(name):
  sp = get_space(name)
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(2), 64))
  for fn in (sp.macs, sp.params):
    traced = np.asarray(jax.jit(jax.vmap(fn))(pop))
    exact = np.array([fn(member(pop, i)) for i in range(64)])
    assert exact.dtype.kind == "i"
    np.testing.assert_allclose(traced, exact, rtol=1e-6)
  # Switching a layer on, a larger expansion or kernel, SE, a wider group: never cheaper.
  a = jax.tree.map(np.asarray, member(pop, 0))
  grown = sp.grow_to_contain(a, sp.max_arch()._replace(kernel=a.kernel, sep_kernel=a.sep_kernel,
                                                      stem_kernel=a.stem_kernel))
  assert sp.macs(grown) >= sp.macs(a) and sp.params(grown) >= sp.params(a)


def _brute_contains(sp, big, small):
  """Inclusion from the exact shapes: every running layer of small runs in big with the same
  kernel, at least its widths and expanded channels, SE where small has it."""
  wb, ws = sp.widths(big), sp.widths(small)
  if np.any(wb < ws) or big.stem_kernel != small.stem_kernel:
    return False
  if sp.sep_active(small) and not (sp.sep_active(big) and big.sep_kernel == small.sep_kernel):
    return False
  ob, os_ = sp.layer_on(big), sp.layer_on(small)
  for i, b in enumerate(sp.layers):
    if not os_[i]:
      continue
    mid = lambda a, w: scale_filters(w[b.in_group], sp.expand_choices[a.expand[i]])
    if not ob[i] or big.kernel[i] != small.kernel[i] or big.se[i] < small.se[i] or \
        mid(big, wb) < mid(small, ws) or big.expand[i] < small.expand[i]:
      return False
  return True


@pytest.mark.parametrize("name", NAMES)
def test_contains_and_grow_to_contain(name):
  sp = get_space(name, width_mult=0.25)
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(4), 400))
  hits = 0
  for i in range(0, 400, 2):
    big, small = member(pop, i), member(pop, i + 1)
    # pairs that are often nested: small = big with some layers off and narrower
    small2 = big._replace(on=big.on * (small.on > 0), filters=np.minimum(big.filters, small.filters),
                          expand=np.minimum(big.expand, small.expand))
    small2 = sp.validate(small2)
    for s in (small, small2):
      got = bool(sp.contains(big, s))
      assert got == _brute_contains(sp, big, s)
      hits += got
      g = sp.grow_to_contain(big, s)
      assert bool(sp.contains(g, s))
      if got:   # already contained: nothing to raise
        assert all(np.array_equal(x, y) for x, y in zip(g, big))
  assert hits > 50
  c = jax.jit(jax.vmap(sp.contains))(pop, jax.tree.map(lambda x: x[::-1], pop))
  assert np.array_equal(np.asarray(c), [bool(sp.contains(member(pop, i), member(pop, 399 - i)))
                                        for i in range(400)])


@pytest.mark.parametrize("name", NAMES)
def test_active_decisions_and_canonicalize(name):
  sp = get_space(name)
  a = jax.tree.map(np.asarray, member(sp.sample(jax.random.key(5), 1), 0))
  a = a._replace(on=np.zeros_like(a.on))
  act = sp.active_decisions(a)
  on = sp.layer_on(a)
  assert np.array_equal(np.asarray(act["kernel"]), on) and not on[list(sp.optional_layers)].any()
  c = sp.canonicalize(a)
  assert np.all(c.kernel[~on] == 0) and np.all(c.expand[~on] == 0)
  assert sp.macs(c) == sp.macs(a) and sp.arch_to_dict(c) == sp.arch_to_dict(a)


def test_config_errors():
  with pytest.raises(InvalidSpaceError, match="stem: 'tiny' is not one of"):
    get_space("proxylessnas", stem="tiny")
  with pytest.raises(InvalidSpaceError, match="width_mult: must be > 0"):
    get_space("mobilenet_v3_like", width_mult=0)
  with pytest.raises(InvalidSpaceError, match="unexpected keyword"):
    get_space("proxylessnas_enlarged", kernels=(3,))
