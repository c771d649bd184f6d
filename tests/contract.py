"""The contract tests' one required table, CONFIGS, and the fixtures they share.

The contract tests (``test_contract_spaces.py``, ``test_contract_supernets.py``) run for every
space in ``regnas_jax.spaces.SPACES`` with the supernet ``regnas_jax.nn.supernet.SUPERNETS``
has for it.  A new space is tested by registering it and adding one entry here: a small,
CPU-sized configuration (``stem='small'`` or 32 px, width 0.25-0.5, 12-36 px inputs, reduced
depth choices where the space allows), the supernet options the tests use, and the overrides
under which ``extract`` is pure slicing (see ``test_contract_spaces.py``).  A registered space
without an entry fails every contract test with a message pointing here.

Why a table in the tests rather than a ``test_config`` on each space class: the entry holds
supernet options (``depthwise_impl``, ``kernel_transform``) next to the space's, which a space
in ``regnas_jax/spaces`` must not know of (it sits below ``nn``), and it keeps test-only
settings out of the package.  ``SearchSpace``'s docstring points here.

Compiled programs are shared: :func:`env` builds one space's supernet, random variables and
its two compiled programs once per process (``functools.lru_cache``), and the space-specific
test files that need a compiled supernet use the same ``env`` (the persistent compilation cache
of ``conftest.py`` serves the same programs across workers).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.nn.supernet import SUPERNETS, build_supernet
from regnas_jax.spaces import SPACES, SkipSpace, member, stack
from regnas_jax.spaces.base import take


@dataclasses.dataclass(frozen=True)
class Config:
  """The contract tests' configuration of one registered space.

  Attributes:
    space: keyword arguments of the space class (small and CPU-sized; one resolution).
    supernet: keyword arguments of its supernet (``build_supernet``).
    literal: ``{'space': {...}, 'supernet': {...}}`` overrides under which ``extract`` only
      slices (no kernel transform, no folded maps): the inclusion test needs them.
  """
  space: dict
  supernet: dict = dataclasses.field(default_factory=dict)
  literal: dict = dataclasses.field(default_factory=dict)


SMALL = dict(stem="small", num_classes=10, resolutions=(12,))
NO_TRANSFORM = dict(supernet=dict(kernel_transform=False))

CONFIGS = {
    # 10 elastic blocks (depth 1 or 2 per stage): every elastic dimension.
    "ofa_mbv3": Config(dict(width_mult=0.5, depth_choices=(1, 2), **SMALL),
                       literal=NO_TRANSFORM),
    # The ImageNet stem (stride 2 + max-pool) at 36 px: 18 -> 9 -> 5 -> 3 -> 2, odd sizes through
    # the ceil-mode shortcut pool; one base block per stage (up to 12 blocks).
    "ofa_resnet50": Config(dict(width_mult=0.25, stem="imagenet", num_classes=10,
                                resolutions=(36,), base_depths=(1, 1, 1, 1))),
    # S1 with plain zero-pad skips, S2 with the ELS (folded on export) and SE.
    "scarlet_s1": Config(dict(width_mult=0.25, els=False, **SMALL), literal=NO_TRANSFORM),
    "scarlet_s2": Config(dict(width_mult=0.25, **SMALL),
                         literal=dict(space=dict(els=False), supernet=dict(kernel_transform=False))),
    # The ImageNet stem (stride 2) at 64 px: the last stage still sees 2x2 maps.
    "proxylessnas": Config(dict(width_mult=0.25, stem="imagenet", num_classes=10,
                                resolutions=(64,))),
    "proxylessnas_enlarged": Config(dict(width_mult=0.25, **SMALL)),
    "mobilenet_v3_like": Config(dict(width_mult=0.25, **SMALL)),
}

NAMES = sorted(SPACES)
P = 6          # population of the compiled supernet programs: min, max and 4 more
EXACT = 4      # members compared with their exact subnets: min, max and 2 more


def config(name: str) -> Config:
  if name not in CONFIGS:
    pytest.fail(f"space {name!r} is registered but has no entry in tests/contract.py CONFIGS: "
                f"add a small CPU-sized configuration (see that module's docstring)")
  if name not in SUPERNETS:
    pytest.fail(f"space {name!r} has no supernet registered (regnas_jax.nn.supernet)")
  return CONFIGS[name]


def build(name: str, literal: bool = False, **space_overrides):
  """``(space, supernet)`` of the contract configuration (``literal``: with its overrides)."""
  c = config(name)
  lit = c.literal if literal else {}
  sp = SPACES[name](**{**c.space, **lit.get("space", {}), **space_overrides})
  return sp, build_supernet(sp, **{**c.supernet, **lit.get("supernet", {})})


def param_shapes(net):
  """Shapes of the supernet's variables (traced, nothing compiled)."""
  r = net.space.resolutions[0]
  return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, r, r, 3)),
                        net.space.max_arch())


def random_variables(name: str, seed: int):
  """Variables of the contract supernet's shapes, every value random and away from its init: kernels
  ~ N(0, 1/fan_in), BN scales around 1, biases and means around 0, variances > 0.3, transform
  matrices and ELS maps around the identity."""
  rng = np.random.default_rng(seed)

  def make(path, s):
    name = jax.tree_util.keystr(path)
    n = rng.normal(size=s.shape).astype(np.float32)
    if name.endswith("['scale']"):
      return 1.0 + 0.3 * n
    if name.endswith("['bias']") or name.endswith("['mean']"):
      return 0.2 * n
    if name.endswith("['var']"):
      return 0.3 + np.abs(n)
    if "matrix" in name:
      return np.eye(s.shape[0], dtype=np.float32) + 0.15 * n
    if name.endswith("['els']"):   # about norm-preserving: a run of skips keeps the scale
      return np.eye(s.shape[2], s.shape[3], dtype=np.float32)[None, None] + n / np.sqrt(
          s.shape[2])
    return n / np.sqrt(np.prod(s.shape[:-1]))
  return jax.tree_util.tree_map_with_path(make, shapes(name))


@functools.lru_cache(maxsize=None)
def population(sp, seed: int, n: int = 10):
  """min, max and ``n`` random archs of the space ``sp`` as one population (numpy; cached).
  In a space with a skip choice (:class:`SkipSpace`) the random ones skip about half the
  layers they may skip, so that runs of skips and every kind of folded shortcut occur."""
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(seed, impl="unsafe_rbg"), n))
  if isinstance(sp, SkipSpace):
    x = getattr(pop, sp.skip_field).copy()
    drop = np.random.default_rng(seed).random(x.shape) < 0.5
    x[drop & np.asarray(sp.skip_allowed)] = sp.skip_index
    pop = pop._replace(**{sp.skip_field: x})
  archs = [sp.min_arch(), sp.max_arch()] + [member(pop, i) for i in range(n)]
  return jax.tree.map(np.asarray, stack([jax.tree.map(np.asarray, a) for a in archs]))


class Coded(NamedTuple):
  """A tree whose entries are replaced by distinct integer codes ``2, 3, ..., size - 1`` in
  float32 (exact below 2**24); 0 and 1 are no codes (values of zero-pad or identity maps)."""
  tree: dict
  size: int


def index_coded(tree) -> Coded:
  leaves, treedef = jax.tree.flatten(tree)
  out, nxt = [], 2
  for x in leaves:
    n = int(np.prod(x.shape))
    out.append(np.arange(nxt, nxt + n, dtype=np.float32).reshape(x.shape))
    nxt += n
  assert nxt < 2 ** 24, "too many entries to code exactly in float32"
  return Coded(jax.tree.unflatten(treedef, out), nxt)


def used_entries(coded: Coded, extracted) -> np.ndarray | None:
  """Bool ``(coded.size,)``, indexed by code: which entries appear in ``extracted`` (a tree of
  values taken from ``coded.tree``); ``None`` if some value is no code (it was computed)."""
  vals = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(extracted)])
  idx = vals.astype(np.int64)
  if not (np.all(idx == vals) and np.all((idx >= 2) & (idx < coded.size))):
    return None
  used = np.zeros(coded.size, bool)
  used[idx] = True
  return used


@functools.lru_cache(maxsize=None)
def shapes(name: str, literal: bool = False):
  """:func:`param_shapes` of the contract configuration (cached; resolution-independent)."""
  return param_shapes(build(name, literal)[1])


class Env(NamedTuple):
  """One space's compiled supernet programs and the data they run on."""
  sp: object
  net: object
  params: dict        # host numpy arrays (extraction is plain slicing: no dispatch)
  stats: dict         # (P, ...) per-member running statistics
  images: np.ndarray
  pop: object         # (P, ...) archs
  single: Callable    # (params, stats, images, arch) -> eval logits, train logits, new stats
  vmapped: Callable   # the same over (stats, arch) with a leading member axis
  traces: dict        # how often each was traced

  def stats_of(self, i):
    return jax.tree.map(lambda s: np.asarray(s[i]), self.stats)


@functools.lru_cache(maxsize=None)
def env(name: str) -> Env:
  sp, net = build(name)
  v = random_variables(name, 0)
  r = sp.resolutions[0]
  images = np.random.default_rng(1).normal(size=(8, r, r, 3)).astype(np.float32)
  scale = 1.0 + 0.1 * np.arange(P, dtype=np.float32)   # member i's statistics: scaled copies
  stats = jax.tree.map(lambda s: np.stack([s * c for c in scale]), v["batch_stats"])

  def run(params, stats, x, a):
    vi = {"params": params, "batch_stats": stats}
    ev = net.apply(vi, x, a, train=False)
    tr, upd = net.apply(vi, x, a, train=True, mutable=["batch_stats"])
    return ev, tr, upd["batch_stats"]

  traces = {"single": 0, "vmapped": 0}

  def counted(key, f):
    def traced(*args):
      traces[key] += 1
      return f(*args)
    return traced

  return Env(sp, net, params=jax.tree.map(np.asarray, v["params"]), stats=stats, images=images,
             pop=take(population(sp, 3), range(P)), single=jax.jit(counted("single", run)),
             vmapped=jax.jit(counted("vmapped", jax.vmap(run, in_axes=(None, 0, None, 0)))),
             traces=traces)


@functools.lru_cache(maxsize=None)
def single_run(name: str, i: int):
  """Member ``i`` through the unvmapped program (cached: several tests compare with it)."""
  e = env(name)
  out = e.single(e.params, e.stats_of(i), e.images, member(e.pop, i))
  return jax.tree.map(np.asarray, out)


@functools.lru_cache(maxsize=None)
def vmapped_run(name: str):
  e = env(name)
  return jax.tree.map(np.asarray, e.vmapped(e.params, e.stats, e.images, e.pop))


def exact_clone(module):
  """The exact module with XLA's depthwise conv where it has one: an implementation
  independent of the supernet's shifted taps, traced as convolutions (``costs``)."""
  if "depthwise_impl" in getattr(module, "__dataclass_fields__", {}):
    return module.clone(depthwise_impl="xla")
  return module


def assert_close(a, b, rtol=1e-4, err_msg=""):
  """Equal up to ``rtol`` of each element and of the array's largest magnitude (an element
  near 0 carries the rounding of the larger values it was computed from)."""
  a, b = np.asarray(a), np.asarray(b)
  scale = max(np.abs(b).max(), 1e-6)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=err_msg)


def assert_trees_close(a, b, rtol=1e-4):
  """:func:`assert_close` leaf by leaf; the trees must have one structure."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree.flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert_close(x, y, rtol, err_msg=jax.tree_util.keystr(path))
