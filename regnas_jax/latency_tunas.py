"""TuNAS's own latency models: Pixel-1 milliseconds from an architecture's choices.

TuNAS (Bender et al., CVPR 2020) searched for a target *latency*, estimated by a linear model
per search space that its authors fitted to Pixel-1 measurements and released (the kernels and
biases are shipped here as ``data_files/tunas_cost_models.json``; source, commit and licence in
``data_files/README.md``).  This module rebuilds what the model reads and offers it as a cost:

* **TuNAS's encoding.**  TuNAS names an architecture by a flat vector ``indices``: one choice
  index per decision (a ``OneOf`` of its search-space definition), in the order TuNAS visits
  them -- block by block, a block's layers before its width, and inside a decision the decisions
  of its choices before the decision itself.  ``num_indices(space)`` is 73 for the ProxylessNAS
  spaces and 86 for MobileNetV3-Like.  Decisions with one choice (the ProxylessNAS widths, a
  block's first layer, which cannot be skipped) still take a position, always 0, and an optional
  layer's decision is 0 for *the layer* and 1 for *skip it* (the reverse of ``arch.on``).
* **The features** (:func:`features`): per layer of the network -- searchable or not, a
  ReLU or a pooling layer too -- the Kronecker product of the one-hot output width of its block,
  the one-hot width of its input (the previous block's for a block's first layer, else the
  block's own) and the layer's own features; a decision contributes its one-hot mask times the
  features of the chosen option, a layer with several decisions (kernel, expansion, SE) the
  Kronecker product of theirs.  Parts of length one are dropped.  The tree of decisions is
  data (:class:`Choice`, :class:`Product`, :class:`Fixed`, :class:`Block`), so any tower can be
  described, e.g. the one-layer towers of TuNAS's feature tests.
* **Costs** (:func:`estimate_ms`): ``features . kernel + bias``, with jax.numpy, so it runs
  inside a jitted, vmapped search step; :func:`cost_fn` makes ``arch -> ms`` for a space.

The conversion to this project's architectures (:func:`arch_to_indices`,
:func:`indices_to_arch`) is one to one: a width index means the same multiplier of TuNAS's
base widths.  What TuNAS's model does not see: the resolution (it models 224 px, so a search
with several resolutions cannot use it), ``width_mult`` and the small-image stem -- the
estimate of a scaled space's architecture is that of the ImageNet-size network with the same
choices.  Where the spaces differ, the conversion stops with one error: a space that tells apart
widths TuNAS merges (``width_mult > 1``: two multipliers rounding to one width at TuNAS's scale)
is an ``InvalidSpaceError`` (:func:`check_space`); a width TuNAS can choose that a scaled space
cannot (``width_mult < 1`` merging two of TuNAS's widths) an ``InvalidArchError`` on the way
back.

Targets (``TARGET_MS``) are TuNAS's defaults (``tunas/mobile_architecture_search.py``): 84 ms
for the ProxylessNAS spaces (the simulated latency of MnasNet / ProxylessNAS-Mobile on a Pixel
1) and 57 ms for MobileNetV3-Like (that of MobileNetV3-Large).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax.errors import InvalidArchError, InvalidSpaceError
from regnas_jax.spaces import tunas as tunas_spaces
from regnas_jax.spaces.base import prep

DATA_FILE = "tunas_cost_models.json"
SPACE_CLASSES = {c.name: c for c in (tunas_spaces.ProxylessNASSpace,
                                     tunas_spaces.ProxylessNASEnlargedSpace,
                                     tunas_spaces.MobileNetV3LikeSpace)}
TARGET_MS = {"proxylessnas": 84.0, "proxylessnas_enlarged": 84.0, "mobilenet_v3_like": 57.0}
# TuNAS's DetectionEndpointSpec closing a body block, by v3 (a layer without decisions, but
# with features where the widths are searched)
_ENDPOINTS = {False: (1, 1, 0, 1, 1, 1), True: (1, 1, 0, 1, 1)}


# ----------------------------------------------------------------------------------------------
# The tree of decisions
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Fixed:
  """A part without decisions (a ReLU, a fixed conv, TuNAS's zero layer): features ``[1]``."""


@dataclasses.dataclass(frozen=True)
class Choice:
  """One decision (TuNAS's ``OneOf``) among ``options`` (trees themselves).

  ``name`` says which part of an architecture it is (for errors); ``source`` how this project's
  arch gives its index: ``('const',)`` (one choice), ``('field', name, element)``,
  ``('off', name, element)`` (TuNAS index = 1 - ours: layer or skip) or ``('filters', group)``.
  """
  options: tuple
  name: str = ""
  source: tuple = ("const",)


@dataclasses.dataclass(frozen=True)
class Product:
  """A layer of several parts (kernel, expansion, SE): the Kronecker product of theirs."""
  parts: tuple


@dataclasses.dataclass(frozen=True)
class Block:
  """Layers sharing an output width: ``filters`` is the width decision (``None``: fixed)."""
  layers: tuple
  filters: Choice | None


def choices(tower) -> list[Choice]:
  """Every decision of ``tower`` (a tuple of :class:`Block`) in TuNAS's index order."""
  out = []

  def walk(node):
    if isinstance(node, Product):
      for p in node.parts:
        walk(p)
    elif isinstance(node, Choice):
      for o in node.options:
        walk(o)
      out.append(node)

  for block in tower:
    for layer in block.layers:
      walk(layer)
    if block.filters is not None:
      walk(block.filters)
  return out


def _kron(a, b):
  if a is None:
    return b
  if b is None:
    return a
  return (a[..., :, None] * b[..., None, :]).reshape(a.shape[:-1] + (-1,))


def _node(node, masks, pos, ones):
  """``(features, next position)`` of one tree; decisions read ``masks`` in index order."""
  if isinstance(node, Fixed):
    return ones, pos
  if isinstance(node, Product):
    out = None
    for p in node.parts:
      f, pos = _node(p, masks, pos, ones)
      out = _kron(out, f)
    return (ones if out is None else out), pos
  feats = []
  for o in node.options:
    f, pos = _node(o, masks, pos, ones)
    feats.append(f)
  m = masks[pos]
  return jnp.concatenate([m[..., i:i + 1] * f for i, f in enumerate(feats)], -1), pos + 1


def features(tower, indices):
  """TuNAS's cost-model features ``(..., F)`` of ``indices`` ``(..., num decisions)``."""
  idx = jnp.asarray(indices)
  lead = idx.shape[:-1]
  masks = [jax.nn.one_hot(idx[..., p], len(c.options), dtype=jnp.float32)
           for p, c in enumerate(choices(tower))]
  ones = jnp.ones(lead + (1,), jnp.float32)
  pos, prev, feats = 0, None, []
  for block in tower:
    layer_feats = []
    for layer in block.layers:
      f, pos = _node(layer, masks, pos, ones)
      layer_feats.append(f)
    out = None
    if block.filters is not None:
      out, pos = _node(block.filters, masks, pos, ones)
    for f in layer_feats:
      feats.append(_kron(_kron(out, prev), f))
      prev = out
  keep = [f for f in feats if f.shape[-1] > 1]
  return jnp.concatenate(keep, -1) if keep else ones


# ----------------------------------------------------------------------------------------------
# TuNAS's three spaces as trees, with the positions of this project's fields
# ----------------------------------------------------------------------------------------------
def tunas_widths(space, group: int) -> tuple:
  """TuNAS's width choices of a group: its base width scaled by every multiplier at TuNAS's
  scale (``width_mult=1``), duplicates removed, ascending."""
  base = type(space).base_widths[group]
  return tuple(sorted({tunas_spaces.scale_filters(base, m) for m in space.multipliers}))


def _options(n: int) -> tuple:
  return (Fixed(),) * n


def _filters(sp, g: int) -> Choice:
  n = len(tunas_widths(sp, g))
  return Choice(_options(n), f"filters[{g}]", ("filters", g) if n > 1 else ("const",))


def _ibn(sp, i: int) -> Product:
  parts = [Choice(_options(len(sp.kernel_choices)), f"kernel[{i}]", ("field", "kernel", i)),
           Choice(_options(len(sp.expand_choices)), f"expand[{i}]", ("field", "expand", i))]
  if len(sp.se_choices) > 1:
    parts.append(Choice(_options(len(sp.se_choices)), f"se[{i}]", ("field", "se", i)))
  return Product(tuple(parts))


def _body(sp) -> list[Block]:
  """The IBN blocks: a first layer, then optional residual ones; TuNAS wraps the ProxylessNAS
  first layer in a one-choice decision."""
  blocks = []
  for b in range(len(sp.block_depths)):
    layers = []
    for lay in (x for x in sp.layers if x.block == b):
      ibn = _ibn(sp, lay.index)
      if lay.optional >= 0:
        layers.append(Choice((ibn, Fixed()), f"on[{lay.optional}]", ("off", "on", lay.optional)))
      else:
        layers.append(ibn if sp.v3 else Choice((ibn,), f"{lay.name} (not skippable)"))
    layers += [Fixed()] * _ENDPOINTS[sp.v3][b]
    blocks.append(Block(tuple(layers), _filters(sp, sp.sep_group + 1 + b)))
  return blocks


@functools.cache
def _reference(name: str):
  """The space ``name`` at TuNAS's scale (the layout the trees are read from)."""
  return _space_class(name)()


@functools.cache
def tower(name: str) -> tuple:
  """TuNAS's definition of the space ``name``, as far as its cost model reads it."""
  sp = _reference(name)
  n = sp.num_groups
  sep_kernel = Choice(_options(len(sp.kernel_choices)), "sep_kernel",
                      ("field", "sep_kernel", None))
  if sp.v3:    # stem conv (kernel 3 or 5), h-swish, optional residual sepconv, endpoint
    stem_kernel = Choice(_options(len(sp.stem_kernels)), "stem_kernel",
                         ("field", "stem_kernel", None))
    stem = [Block((stem_kernel, Fixed(), Choice((sep_kernel, Fixed()), "sep_on",
                                                ("off", "sep_on", None)), Fixed()),
                  _filters(sp, 0))]
    head = [Block((Fixed(),) * 3, _filters(sp, n - 2)), Block((Fixed(),) * 2, _filters(sp, n - 1))]
  else:        # stem conv + ReLU; sepconv (kernel searched) + endpoint
    stem = [Block((Fixed(), Fixed()), _filters(sp, 0)),
            Block((sep_kernel, Fixed()), _filters(sp, 1))]
    head = [Block((Fixed(),) * 3, _filters(sp, n - 1))]   # 1x1 conv, ReLU, pooling
  return tuple(stem + _body(sp) + head)


def _space_class(name: str):
  if name not in SPACE_CLASSES:
    raise InvalidSpaceError(f"space: TuNAS's latency models cover {', '.join(SPACE_CLASSES)}, "
                            f"not {name!r}")
  return SPACE_CLASSES[name]


def num_indices(space_or_name) -> int:
  """Length of TuNAS's ``indices`` for a space (or its name)."""
  return len(choices(tower(getattr(space_or_name, "name", space_or_name))))


# ----------------------------------------------------------------------------------------------
# The models
# ----------------------------------------------------------------------------------------------
@functools.cache
def _data() -> dict:
  path = importlib.resources.files("regnas_jax") / "data_files" / DATA_FILE
  return json.loads(path.read_text())


@functools.cache
def model(name: str) -> tuple[np.ndarray, np.float32]:
  """``(kernel (F,), bias)`` of TuNAS's model of the space ``name`` (float32)."""
  _space_class(name)
  entry = _data()["spaces"][name]
  kernel = np.asarray(entry["kernel"], np.float64).astype(np.float32)
  return kernel, np.float32(entry["bias"])


def source() -> dict:
  """Where the models come from (repository, path, commit, licence)."""
  return dict(_data()["source"])


def check_indices(name: str, indices) -> np.ndarray:
  """``indices`` as an int array ``(..., N)``, each within its decision's choices; anything
  else is one ``InvalidArchError`` naming the position."""
  chs = choices(tower(name))
  arr = np.asarray(indices)
  if arr.ndim == 0 or arr.shape[-1] != len(chs):
    raise InvalidArchError(f"indices: {name} takes {len(chs)} indices (TuNAS's encoding), got "
                           f"shape {arr.shape}")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
      raise InvalidArchError(f"indices: must be integers, got {arr.dtype} values")
  arr = arr.astype(np.int64)
  sizes = np.array([len(c.options) for c in chs])
  bad = np.argwhere((arr < 0) | (arr >= sizes))
  if len(bad):
    p = int(bad[0][-1])
    raise InvalidArchError(f"indices[{p}] ({chs[p].name}): {int(arr[tuple(bad[0])])} is not in "
                           f"[0, {sizes[p]}) for {name}")
  return arr


def estimate_ms(name: str, indices):
  """TuNAS's estimated Pixel-1 latency (ms) of ``indices`` ``(..., N)`` in the space ``name``.

  Concrete indices are checked (:func:`check_indices`); traced ones (inside ``jit``/``vmap``)
  are taken as they are.
  """
  kernel, bias = model(name)
  try:
    indices = check_indices(name, indices)
  except jax.errors.TracerArrayConversionError:
    pass
  f = features(tower(name), indices)
  if f.shape[-1] != kernel.shape[0]:   # the data file and the tree disagree: a bug
    raise AssertionError(f"{name}: {f.shape[-1]} features, {kernel.shape[0]} kernel values")
  return f @ jnp.asarray(kernel) + bias


# ----------------------------------------------------------------------------------------------
# This project's architectures <-> TuNAS's indices
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _width_tables(space) -> list[np.ndarray]:
  """Per group: this space's multiplier index -> TuNAS's width index."""
  out = []
  for g in range(space.num_groups):
    widths = tunas_widths(space, g)
    full = [tunas_spaces.scale_filters(type(space).base_widths[g], m) for m in space.multipliers]
    out.append(np.array([widths.index(w) for w in full], np.int32))
  return out


def check_space(space) -> None:
  """``space`` can be read by TuNAS's model: one of its three spaces, and no two valid width
  choices that TuNAS's widths merge (at ``width_mult > 1`` a space tells apart multipliers that
  round to one width at TuNAS's scale: a choice TuNAS does not have).  Else an
  ``InvalidSpaceError``."""
  _space_class(space.name)
  if not isinstance(space, SPACE_CLASSES[space.name]):
    raise InvalidSpaceError(f"space: {type(space).__name__} is not {space.name!r}")
  mask = space.choice_mask()["filters"]
  for g, table in enumerate(_width_tables(space)):
    valid = np.flatnonzero(mask[g])
    for m in valid:
      same = valid[(table[valid] == table[m]) & (valid < m)]
      if len(same):
        raise InvalidSpaceError(
            f"width_mult: at {space.width_mult} filters[{g}] tells apart multipliers "
            f"{space.multipliers[same[0]]} and {space.multipliers[m]}, which TuNAS's widths "
            f"merge (both {tunas_widths(space, g)[table[m]]} at its scale); its latency model "
            f"cannot tell them apart")


def arch_to_indices(space, arch):
  """TuNAS's ``indices`` ``(..., N)`` (int32) of an arch or population of ``space`` (numpy for
  concrete archs, jax.numpy under tracing).  The resolution is not part of them."""
  check_space(space)
  xp, arch = prep(arch)
  tables = [xp.asarray(t) for t in _width_tables(space)]
  lead = xp.shape(arch.resolution)
  cols = []
  for c in choices(tower(space.name)):
    kind = c.source[0]
    if kind == "const":
      cols.append(xp.zeros(lead, np.int32))
      continue
    if kind == "filters":
      g = c.source[1]
      cols.append(tables[g][xp.asarray(arch.filters)[..., g]])
      continue
    v = xp.asarray(getattr(arch, c.source[1]))
    v = v if c.source[2] is None else v[..., c.source[2]]
    cols.append(1 - v if kind == "off" else v)
  return xp.stack(cols, -1).astype(np.int32)


def indices_to_arch(space, indices, resolution=None):
  """The arch of ``space`` with TuNAS's ``indices`` (one architecture, numpy).

  ``resolution`` (a value of ``space.resolutions``) is needed only where the space has several.
  A width TuNAS can choose that ``space`` cannot (at ``width_mult != 1`` two multipliers can
  round to one width) is an ``InvalidArchError``.
  """
  check_space(space)
  idx = check_indices(space.name, indices)
  if idx.ndim != 1:
    raise InvalidArchError(f"indices: one architecture's {idx.shape[-1]} indices, got shape "
                           f"{idx.shape}")
  if resolution is None and len(space.resolutions) > 1:
    raise InvalidArchError(f"resolution: TuNAS's indices carry none; pass one of "
                           f"{tuple(space.resolutions)}")
  if resolution is not None and resolution not in space.resolutions:
    raise InvalidArchError(f"resolution: {resolution!r} is not one of {tuple(space.resolutions)}")
  r = 0 if resolution is None else list(space.resolutions).index(resolution)
  fields = {f.name: np.zeros(f.shape, np.int32) for f in space.fields()}
  fields["resolution"] = np.int32(r)
  for c, v in zip(choices(tower(space.name)), idx.tolist()):
    kind = c.source[0]
    if kind == "filters":
      fields["filters"][c.source[1]] = _multiplier(space, c.source[1], v)
    elif kind in ("field", "off"):
      v = 1 - v if kind == "off" else v
      if c.source[2] is None:
        fields[c.source[1]] = np.int32(v)
      else:
        fields[c.source[1]][c.source[2]] = v
  return space.validate(space.arch_type(**fields), population=False)


def _multiplier(space, g: int, tunas_index: int) -> int:
  """This space's first valid multiplier index with TuNAS's width ``tunas_index``."""
  table = _width_tables(space)[g]
  ok = np.flatnonzero((table == tunas_index) & space.choice_mask()["filters"][g])
  if not len(ok):
    w = tunas_widths(space, g)[tunas_index]
    raise InvalidArchError(
        f"filters[{g}]: TuNAS's width {w} (index {tunas_index}) has no multiplier of its own in "
        f"this space (width_mult={space.width_mult}: it rounds to the width of a smaller one)")
  return int(ok[0])


def cost_fn(space):
  """``arch -> estimated ms`` for ``space`` (jit- and vmap-able)."""
  check_space(space)
  return lambda arch: estimate_ms(space.name, arch_to_indices(space, arch))
