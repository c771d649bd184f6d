"""OFA-ResNet50 search space: layout, sampling, variation, contains, costs, JSON layout.

JSON round trips, error messages, validation and inclusion are contract tests
(``test_contract_spaces.py``)."""

import itertools
import json

import jax
import numpy as np
import pytest

from regnas_jax.spaces import InvalidSpaceError, OFAResNet50Space, ResNetArch, get_space, member

SPACE = OFAResNet50Space(num_classes=1000, resolutions=(160, 192, 224))


def np_arch(a):
  return jax.tree.map(np.asarray, a)


def arch(depth, expand, width, stem=1, res=0, sp=SPACE):
  """Arch from readable per-stage extra depths, one expand index (or 18) and width indices."""
  e = np.full(sp.num_blocks, expand, np.int32) if np.ndim(expand) == 0 else np.asarray(expand)
  w = np.full(6, width, np.int32) if np.ndim(width) == 0 else np.asarray(width, np.int32)
  return ResNetArch(np.int32(res), np.int32(stem),
                    np.array([sp.depth_choices.index(d) for d in depth], np.int32), e, w)


def test_layout_matches_ofa():
  sp = OFAResNet50Space()
  assert sp.blocks_per_stage == (4, 4, 6, 4) and sp.num_blocks == 18
  assert sp.stem_choices == ((24, 24, 32), (40, 48, 64))   # make_divisible(64 w) and its half
  assert sp.stage_choices[0] == (168, 208, 256) and sp.stage_choices[3] == (1328, 1640, 2048)
  assert [b.stride for b in sp.blocks if b.downsample] == [1, 2, 2, 2]
  assert [b.downsample for b in sp.blocks[:5]] == [True, False, False, False, True]
  # middle channels relative to the block's *output* width: 256 * 0.25 = 64 (classic ResNet50)
  assert sp.blocks[0].mid_table[2] == (48, 64, 88)
  assert sp.blocks[0].in_choices == (40, 48, 64) and sp.blocks[4].in_choices == (168, 208, 256)
  assert sp.num_archs() == pytest.approx(2.46e12, rel=0.01)  # "about 2.5e12" (OFA's code)
  small = OFAResNet50Space(stem="small")
  assert small.stem_stride == 1 and not small.max_pool and small.resolutions == (24, 28, 32)


@pytest.mark.parametrize("expands, widths", [((0.25, 0.5), (1.0,)), ((0.25,), (0.5, 1.0))])
def test_num_archs_matches_enumeration_on_a_tiny_space(expands, widths):
  sp = OFAResNet50Space(base_depths=(1, 1, 1, 1), depth_choices=(0, 1), expand_choices=expands,
                        width_choices=widths, resolutions=(32,))
  ne, nw, n = len(expands), len(widths), sp.num_blocks
  seen = set()
  for choice in itertools.product(range(2), *[range(2)] * 4, *[range(ne)] * n, *[range(nw)] * 6):
    a = ResNetArch(np.int32(0), np.int32(choice[0]), np.array(choice[1:5], np.int32),
                   np.array(choice[5:5 + n], np.int32), np.array(choice[5 + n:], np.int32))
    seen.add(json.dumps(sp.arch_to_dict(a)))
  assert len(seen) == sp.num_archs()


def test_sample_mutate_crossover_stay_valid_and_are_deterministic():
  pop = SPACE.sample(jax.random.key(0), 500)
  SPACE.validate(pop, population=True)
  stem = np.asarray(pop.stem_depth)
  assert 0.4 < stem.mean() < 0.6                   # OFA samples the stem layer as {min, max}
  mut = jax.jit(jax.vmap(lambda k, a: SPACE.mutate(k, a, 0.3)))(
      jax.random.split(jax.random.key(1), 500), pop)
  SPACE.validate(mut, population=True)
  changed = np.asarray(mut.expand) != np.asarray(pop.expand)
  assert 0.1 < changed.mean() < 0.3                # resampled w.p. 0.3, same value w.p. 1/3
  x = SPACE.crossover(jax.random.key(2), member(pop, 0), member(pop, 1))
  for f in SPACE.fields():
    a, b, c = (np.asarray(getattr(t, f.name)) for t in (member(pop, 0), member(pop, 1), x))
    assert np.all((c == a) | (c == b))
  again = SPACE.sample(jax.random.key(0), 500)
  assert all(np.array_equal(a, b) for a, b in zip(np_arch(pop), np_arch(again)))


def test_contains_order_and_brute_force():
  """contains == every field >= on what small uses; reflexive, transitive, min/max bounds."""
  mn, mx = np_arch(SPACE.min_arch()), np_arch(SPACE.max_arch())
  pop = np_arch(SPACE.sample(jax.random.key(3), 60))
  assert np.all(SPACE.contains(mx, pop)) and np.all(SPACE.contains(pop, mn))
  assert np.all(SPACE.contains(pop, pop)) and not SPACE.contains(mn, mx)
  rng = np.random.default_rng(0)
  for i in range(60):
    small = member(pop, i)
    big = ResNetArch(*[np.minimum(x + rng.integers(0, 2, x.shape), f.size - 1).astype(np.int32)
                       for x, f in zip(small, SPACE.fields())])
    used = SPACE.block_active(small)
    expect = (big.stem_depth >= small.stem_depth and np.all(big.depth >= small.depth)
              and np.all(big.width >= small.width) and np.all(big.expand[used] >= small.expand[used]))
    assert expect and SPACE.contains(big, small)                  # grown: contained
    other = member(pop, (i + 1) % 60)
    used = SPACE.block_active(small)
    expect = (other.stem_depth >= small.stem_depth and np.all(other.depth >= small.depth)
              and np.all(other.width >= small.width)
              and np.all(other.expand[used] >= small.expand[used]))
    assert bool(SPACE.contains(other, small)) == bool(expect)
  jit_c = jax.jit(jax.vmap(SPACE.contains, in_axes=(0, None)))(pop, member(pop, 0))
  np.testing.assert_array_equal(np.asarray(jit_c), SPACE.contains(pop, member(pop, 0)))


def test_contains_ignores_blocks_small_does_not_use():
  a = arch([0, 0, 0, 0], 1, 1)
  b = a._replace(expand=a.expand.copy())
  b.expand[3] = 2                                   # stage 1, block 4: unused at extra depth 0
  assert SPACE.contains(a, b) and SPACE.contains(b, a)
  b.expand[0] = 0                                   # a used block
  assert SPACE.contains(a, b) and not SPACE.contains(b, a)


def test_grow_to_contain_is_minimal():
  pop = np_arch(SPACE.sample(jax.random.key(4), 40))
  for i in range(0, 40, 2):
    a, small = member(pop, i), member(pop, i + 1)
    g = np_arch(SPACE.grow_to_contain(a, small))
    assert SPACE.contains(g, small) and SPACE.contains(g, a)
    # lowering any raised element by one breaks containment of small
    for f in ("depth", "width", "expand"):
      x, y = getattr(g, f), getattr(a, f)
      for j in np.flatnonzero(x != y):
        low = x.copy()
        low[j] -= 1
        assert not SPACE.contains(g._replace(**{f: low}), small)
  jg = jax.jit(SPACE.grow_to_contain)(member(pop, 0), member(pop, 1))
  assert all(np.array_equal(x, y) for x, y in zip(np_arch(jg), SPACE.grow_to_contain(
      member(pop, 0), member(pop, 1))))


def test_mid_channels_grow_with_width_and_expand():
  """Inclusion rests on this: a larger width or expand index never gives fewer middle channels."""
  for sp in (SPACE, OFAResNet50Space(width_mult=0.25, stem="small")):
    for b in sp.blocks:
      t = np.array(b.mid_table)
      assert np.all(np.diff(t, axis=0) >= 0) and np.all(np.diff(t, axis=1) >= 0)


def test_costs_under_jit_equal_exact_costs():
  pop = np_arch(SPACE.sample(jax.random.key(5), 30))
  jm = np.asarray(jax.jit(jax.vmap(SPACE.macs))(pop))
  jp = np.asarray(jax.jit(jax.vmap(SPACE.params))(pop))
  for i in range(30):
    a = member(pop, i)
    assert abs(jm[i] - SPACE.macs(a)) <= 1e-6 * SPACE.macs(a)
    assert abs(jp[i] - SPACE.params(a)) <= 1e-6 * SPACE.params(a)


def test_published_reference_points_at_224():
  """ResNet-50-D is a member (stage depths 3-4-6-3, expand 0.25, width 1.0, deep stem): 25.6 M
  parameters in timm's ``resnet50d`` model card (huggingface.co/timm/resnet50d.ra2_in1k), 4.3
  GFLOPs (multiply-adds) in "Bag of Tricks" (He et al. 2019, Table 5).  OFA's ResNet50 tutorial
  (tutorial/ofa_resnet50_example.ipynb) prints random subnets from 959.9 to 4557.3 M MACs at
  128-256 px; the min and max at 224 px must bracket the ones it drew at <= 224."""
  sp = OFAResNet50Space(resolutions=(224,))
  r50d = arch([1, 2, 2, 1], 1, 2, sp=sp)
  assert round(sp.params(r50d) / 1e6, 1) == 25.6
  assert round(sp.macs(r50d) / 1e9, 1) == 4.3
  lo, hi = sp.macs(sp.min_arch()), sp.macs(sp.max_arch())
  assert lo <= 959.9e6 * (224 / 128) ** 2 and hi >= 4557.3e6 * (224 / 256) ** 2
  assert (round(lo / 1e9, 2), round(hi / 1e9, 2)) == (0.96, 7.49)


def test_json_layout_and_format():
  """The readable form (the round trip and error messages are contract tests)."""
  a = arch([0, 1, 2, 0], 1, 2, stem=0)
  j = SPACE.arch_to_dict(a)
  assert j["stem"] == {"middle_layer": False, "width_middle": 1, "width_out": 1}
  assert [s["extra_depth"] for s in j["stages"]] == [0, 1, 2, 0]
  assert [len(s["expand"]) for s in j["stages"]] == [2, 3, 6, 2]
  assert SPACE.format(a).startswith(f"r{j['resolution']} stem")


def test_space_config_errors_and_registry():
  assert isinstance(get_space("ofa_resnet50", stem="small", width_mult=0.5), OFAResNet50Space)
  with pytest.raises(InvalidSpaceError, match="base_depths: need 4 integers"):
    OFAResNet50Space(base_depths=(2, 2, 4))
  with pytest.raises(InvalidSpaceError, match="depth_choices: choices must be strictly ascending"):
    OFAResNet50Space(depth_choices=(1, 0))
  with pytest.raises(InvalidSpaceError, match="width_choices: choices must be positive"):
    OFAResNet50Space(width_choices=(0.0, 1.0))
  with pytest.raises(InvalidSpaceError, match="stem: 'cifar' is not one of"):
    OFAResNet50Space(stem="cifar")
