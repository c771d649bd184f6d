"""TuNAS's three search spaces (Bender et al., CVPR 2020; layouts of ``tunas/mobile_search_space_v3.py``).

All three are MobileNetV2-style towers of inverted bottlenecks (IBN: 1x1 expand, BN, act, k x k
depthwise carrying the stride, BN, act, [squeeze-excite], 1x1 project, BN)::

  ProxylessNAS ('proxylessnas'), widths (32, 16 | 32 40 80 96 192 320 | 1280)
    stem      3x3 conv, stride 2 (ImageNet) / 1 (small images), BN, ReLU
    sepconv   k x k depthwise (k searched), BN, ReLU, 1x1 project, BN
    blocks    6 blocks of 4 4 4 4 4 1 IBN layers, first-layer strides 2 2 2 1 2 1 (the first is 1
              on the small stem: total stride 8 for 32 px inputs); every layer but a block's
              first may be *zero* -- a residual layer whose branch is off, i.e. an identity
    IBN       expansion {3, 6} x kernel {3, 5, 7}, ReLU, no SE
    head      1x1 conv, BN, ReLU, global average pool, classifier
  ProxylessNAS-Enlarged ('proxylessnas_enlarged'): the same with base widths
    (16, 16 | 16 32 64 128 256 512 | 1024) and every one of these 9 widths searched over
    multipliers {1/2, 5/8, 3/4, 1, 5/4, 3/2, 2}.
  MobileNetV3-Like ('mobilenet_v3_like'), base widths (16 | 16 32 64 128 256 | 512, 1024), all
    searched over the same multipliers
    stem      k x k conv, k in {3, 5}, h-swish; then an *optional* residual sepconv (k in
              {3, 5, 7}, ReLU, output = the stem's width)
    blocks    5 blocks of 1 IBN + 3 optional residual IBN layers, strides 2 2 2 1 2; IBN
              expansion {1..6} x kernel {3, 5, 7} x SE {off, on} (SE: ratio 1/4, inner ReLU,
              sigmoid gate), ReLU in blocks 1-2, h-swish in blocks 3-5
    head      1x1 conv + BN + h-swish, global pool, 1x1 conv (bias, no BN) + h-swish, classifier

Widths follow TuNAS's rounding ``scale(f, m) = max(8, int(f * m / 8 + 0.5) * 8)``, expansions
are relative to the layer's input width (``mid = scale(c_in, e)``), SE hidden units
``scale(mid, 1/4)``.  ``width_mult`` scales every base width first (``width_mult=0.25`` for a
CPU-sized network); TuNAS's own spaces are ``width_mult=1``.

Architecture fields (choice indices; :class:`TunasArch`)::

  resolution ()  stem_kernel ()  sep_kernel ()  sep_on ()  filters (G,)
  on (S,)        kernel (L,)     expand (L,)    se (L,)

``on`` covers only the S *optional* layers (``space.optional_layers`` gives their positions);
a field with one choice (e.g. ``se`` in ProxylessNAS) is a fixed part of the network.  Where two
width multipliers of a group round to the same width (small groups) only the first is a valid
choice -- ``space.choice_mask()`` says which; sampling, mutation, validation and TuNAS's policy
respect it, so every valid arch is a distinct network.

Weight sharing (TuNAS's "operation collapsing"; ``nn/tunas.py``): one max-width tensor per layer
with first-N channel masks (a group's width is shared by every layer reading or writing it),
shared 1x1 convs across expansions and kernel sizes, one depthwise kernel per kernel size (not
nested), zero layers as a gate.  Inclusion (:meth:`contains`) therefore needs *equal* kernels.

MACs count conv/linear multiply-adds only (OFA's counter, also what TuNAS calls "FLOPs").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax.spaces import base
from regnas_jax.spaces.base import InvalidArchError

MULTIPLIERS = (0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0)
STEMS = ("imagenet", "small")
DEFAULT_RESOLUTIONS = {"imagenet": (224,), "small": (32,)}


def scale_filters(f: float, m: float, base_: int = 8) -> int:
  """TuNAS's width rounding: ``max(base, int(f * m / base + 0.5) * base)``."""
  return max(base_, int(f * m / base_ + 0.5) * base_)


class TunasArch(NamedTuple):
  """Choice indices of one TuNAS subnet (add a leading axis for a population)."""
  resolution: jax.Array   # ()   index into space.resolutions
  stem_kernel: jax.Array  # ()   index into space.stem_kernels
  sep_kernel: jax.Array   # ()   index into space.kernel_choices
  sep_on: jax.Array       # ()   0/1 (optional sepconv; fixed on in the ProxylessNAS spaces)
  filters: jax.Array      # (G,) index into space.multipliers, per width group
  on: jax.Array           # (S,) 0/1 per optional layer
  kernel: jax.Array       # (L,) index into space.kernel_choices, per IBN layer
  expand: jax.Array       # (L,) index into space.expand_choices
  se: jax.Array           # (L,) 0/1 (one choice, off, in the ProxylessNAS spaces)


@dataclasses.dataclass(frozen=True)
class LayerLayout:
  """Static facts of one IBN layer."""
  index: int
  block: int
  in_group: int        # width group of the input
  out_group: int       # width group of the output
  stride: int
  act: str             # 'relu' | 'h_swish'
  optional: int        # index into ``arch.on`` (-1: mandatory); optional layers are residual

  @property
  def name(self) -> str:
    return f"layer{self.index + 1}"


@dataclasses.dataclass(frozen=True)
class TunasSpace(base.SearchSpace):
  """Shared machinery; the three spaces below set the layout class attributes.

  Args:
    width_mult: scales every base width before TuNAS's rounding (1.0 is TuNAS's).
    stem: ``'imagenet'`` (total stride 32) or ``'small'`` (total stride 8, for 32 px inputs).
    num_classes: classifier outputs.
    resolutions: input sizes the search may choose (default 224 / 32 by stem).
  """
  arch_type = TunasArch
  warmup_fields = ("filters", "expand")   # widened by TuNAS's filter warmup
  # layout (plain class attributes, not config fields; set by each space)
  base_widths = ()
  block_depths = ()
  block_strides = ()
  block_acts = ()
  searched_widths = False
  v3 = False

  width_mult: float = 1.0
  stem: str = "imagenet"
  num_classes: int = 1000
  resolutions: tuple | None = None

  def __post_init__(self):
    self._check_common({s: None for s in STEMS}, DEFAULT_RESOLUTIONS)

  # -- static layout ------------------------------------------------------------------------
  @property
  def stem_stride(self) -> int:
    return 2 if self.stem == "imagenet" else 1

  @property
  def multipliers(self) -> tuple:
    return MULTIPLIERS if self.searched_widths else (1.0,)

  @property
  def stem_kernels(self) -> tuple:
    return (3, 5) if self.v3 else (3,)

  @property
  def kernel_choices(self) -> tuple:
    return (3, 5, 7)

  @property
  def expand_choices(self) -> tuple:
    return (1, 2, 3, 4, 5, 6) if self.v3 else (3, 6)

  @property
  def se_choices(self) -> tuple:
    return (False, True) if self.v3 else (False,)

  @property
  def sep_choices(self) -> tuple:
    return (False, True) if self.v3 else (True,)

  @functools.cached_property
  def group_widths(self) -> tuple[tuple[int, ...], ...]:
    """Per width group, the width of every multiplier (duplicates kept; see choice_mask)."""
    return tuple(tuple(scale_filters(w * self.width_mult, m) for m in self.multipliers)
                 for w in self.base_widths)

  @property
  def num_groups(self) -> int:
    return len(self.base_widths)

  @property
  def sep_group(self) -> int:
    """Width group of the sepconv's output (the stem's own group when it is residual)."""
    return 0 if self.v3 else 1

  @property
  def head_groups(self) -> tuple:
    return tuple(range(len(self.block_depths) + self.sep_group + 1, self.num_groups))

  @functools.cached_property
  def layers(self) -> tuple[LayerLayout, ...]:
    out, opt, prev = [], 0, self.sep_group
    first_stride = {"imagenet": self.block_strides[0], "small": 1}[self.stem]
    for b, (d, s, act) in enumerate(zip(self.block_depths, self.block_strides, self.block_acts)):
      g = self.sep_group + 1 + b
      for j in range(d):
        stride = (first_stride if b == 0 else s) if j == 0 else 1
        out.append(LayerLayout(len(out), b, prev if j == 0 else g, g, stride, act,
                               -1 if j == 0 else opt))
        opt += j > 0
      prev = g
    return tuple(out)

  @property
  def optional_layers(self) -> tuple:
    """Positions (into :attr:`layers`) of the layers ``arch.on`` switches."""
    return tuple(b.index for b in self.layers if b.optional >= 0)

  def fields(self) -> tuple[base.Field, ...]:
    n, s = len(self.layers), len(self.optional_layers)
    return (base.Field("resolution", (), self.resolutions),
            base.Field("stem_kernel", (), self.stem_kernels),
            base.Field("sep_kernel", (), self.kernel_choices),
            base.Field("sep_on", (), self.sep_choices),
            base.Field("filters", (self.num_groups,), self.multipliers),
            base.Field("on", (s,), (False, True)),
            base.Field("kernel", (n,), self.kernel_choices),
            base.Field("expand", (n,), self.expand_choices),
            base.Field("se", (n,), self.se_choices))

  @functools.cached_property
  def _filter_mask(self) -> np.ndarray:
    m = np.zeros((self.num_groups, len(self.multipliers)), bool)
    for g, ws in enumerate(self.group_widths):
      for i, w in enumerate(ws):
        m[g, i] = w not in ws[:i]
    return m

  def choice_mask(self) -> dict:
    """Bool ``field.shape + (num_choices,)`` per field: which choices are distinct networks.

    Only width multipliers can collide (two multipliers rounding to one width); the first of
    them is the valid one.  TuNAS removes the duplicates from its choice lists; here the choice
    lists stay uniform across groups and the policy gives the duplicates zero probability.
    """
    out = {f.name: np.ones(f.shape + (f.size,), bool) for f in self.fields()}
    out["filters"] = self._filter_mask.copy()
    return out

  def num_archs(self) -> int:
    """Distinct networks per resolution (TuNAS's README counts decision combinations, e.g.
    about 4e21 for ProxylessNAS; here a zero layer's kernel and expansion do not multiply)."""
    nk, ne, ns = len(self.kernel_choices), len(self.expand_choices), len(self.se_choices)
    ibn = nk * ne * ns
    total = len(self.stem_kernels) * (nk + (1 if self.v3 else 0))
    total *= int(np.prod(self._filter_mask.sum(1), dtype=object))
    for b in self.layers:
      total *= ibn + (b.optional >= 0)
    return int(total)

  # -- arch helpers ----------------------------------------------------------------------------
  def widths(self, arch: TunasArch):
    """Int ``(..., G)``: the width of every group in ``arch``."""
    xp, arch = base.prep(arch)
    table = xp.asarray(np.array(self.group_widths, np.int32))
    return table[xp.arange(self.num_groups), xp.asarray(arch.filters)]

  def sep_active(self, arch: TunasArch):
    """Bool ``(...)``: whether the sepconv runs (always in the ProxylessNAS spaces)."""
    xp, arch = base.prep(arch)
    return xp.asarray(self.sep_choices)[xp.asarray(arch.sep_on)]

  @functools.cached_property
  def max_widths(self) -> tuple:
    return tuple(max(ws) for ws in self.group_widths)

  def layer_on(self, arch: TunasArch):
    """Bool ``(..., L)``: which IBN layers run (mandatory ones always)."""
    xp, arch = base.prep(arch)
    on = xp.asarray(arch.on) > 0
    cols = []
    for b in self.layers:
      cols.append(on[..., b.optional] if b.optional >= 0 else xp.ones(on.shape[:-1], bool))
    return xp.stack(cols, -1)

  def active_decisions(self, arch: TunasArch) -> dict:
    """Decisions that shape the network (TuNAS's hierarchical log-prob): a zero layer's kernel,
    expansion and SE do not count, nor an optional sepconv's kernel when it is off."""
    act = {f.name: jnp.ones(f.shape, bool) for f in self.fields()}
    act["kernel"] = act["expand"] = act["se"] = self.layer_on(arch)
    act["sep_kernel"] = jnp.asarray(self.sep_active(arch))
    return act

  def canonicalize(self, arch: TunasArch) -> TunasArch:
    """Inactive decisions (inside zero layers, an off sepconv) set to index 0."""
    xp, arch = base.prep(arch)
    on = self.layer_on(arch)
    z = lambda a, m: xp.where(m, a, 0).astype(np.int32)
    return arch._replace(kernel=z(arch.kernel, on), expand=z(arch.expand, on), se=z(arch.se, on),
                         sep_kernel=z(arch.sep_kernel, self.sep_active(arch)))

  # -- sampling and variation (respect choice_mask) ---------------------------------------------
  def sample(self, key: jax.Array, n: int | None = None, allowed: Mapping | None = None):
    """Uniform over the valid (and ``allowed``) choices of every decision element."""
    lead = () if n is None else (n,)
    idx = self.allowed_indices(allowed)
    masks = self.choice_mask()
    out = {}
    for k, f in zip(jax.random.split(key, len(self.fields())), self.fields()):
      ok = (masks[f.name] & np.isin(np.arange(f.size), idx[f.name])).reshape(-1, f.size)
      n_ok = ok.sum(-1)
      # per element, its valid choice indices first (a stable sort of "not valid")
      table = np.argsort(~ok, axis=-1, kind="stable").astype(np.int32)
      pick = jax.random.randint(k, lead + (ok.shape[0],), 0, jnp.asarray(n_ok), jnp.int32)
      if np.all(n_ok == f.size):
        val = pick
      else:
        val = jnp.asarray(table)[jnp.arange(ok.shape[0]), pick]
      out[f.name] = val.reshape(lead + f.shape)
    return TunasArch(**out)

  def _extreme(self, allowed, pick):
    idx = self.allowed_indices(allowed)
    masks = self.choice_mask()
    out = {}
    for f in self.fields():
      ok = masks[f.name] & np.isin(np.arange(f.size), idx[f.name])
      out[f.name] = jnp.asarray(np.array([pick(np.flatnonzero(r)) for r in ok.reshape(-1, f.size)],
                                         np.int32).reshape(f.shape))
    return TunasArch(**out)

  def min_arch(self, allowed: Mapping | None = None) -> TunasArch:
    """The smallest valid (and ``allowed``) choice everywhere."""
    return self._extreme(allowed, lambda i: i[0])

  def max_arch(self, allowed: Mapping | None = None) -> TunasArch:
    """The largest valid (and ``allowed``) choice everywhere (for widths: the first multiplier
    giving the group's largest width)."""
    return self._extreme(allowed, lambda i: i[-1])

  def mutate(self, key: jax.Array, arch: TunasArch, prob: float = 0.1,
             resolution_prob: float | None = None) -> TunasArch:
    """Each decision element is resampled (uniformly over its valid choices) with ``prob``;
    the resolution with ``resolution_prob``."""
    rprob = prob if resolution_prob is None else resolution_prob
    kb, ks = jax.random.split(key)
    fresh = self.sample(ks)
    out = {}
    for k, f in zip(jax.random.split(kb, len(self.fields())), self.fields()):
      p = rprob if f.name == "resolution" else prob
      out[f.name] = jnp.where(jax.random.bernoulli(k, p, f.shape), getattr(fresh, f.name),
                              getattr(arch, f.name)).astype(jnp.int32)
    return TunasArch(**out)

  def validate(self, arch, *, population=None):
    a = super().validate(arch, population=population)
    bad = ~self._filter_mask[np.arange(self.num_groups), a.filters]
    if bad.any():
      pos = tuple(int(i) for i in np.argwhere(bad)[0])
      g = pos[-1]
      m = self.multipliers[int(a.filters[pos])]
      raise InvalidArchError(
          f"filters[{g}]: multiplier {m} gives width {self.group_widths[g][int(a.filters[pos])]}, "
          f"the same as a smaller multiplier (use the first one: index "
          f"{self.group_widths[g].index(self.group_widths[g][int(a.filters[pos])])})")
    return a

  # -- inclusion --------------------------------------------------------------------------------
  def contains(self, big: TunasArch, small: TunasArch):
    """Weight inclusion: ``small``'s weights are a slice of ``big``'s -- every width and
    expansion at least ``small``'s, every running layer of ``small`` running in ``big`` with
    the *same* kernel (one depthwise kernel per size) and SE if ``small`` has it, the same stem
    kernel, the sepconv on (with the same kernel) where ``small``'s is."""
    xp, (big, small) = base.prep(big, small)
    b_on, s_on = self.layer_on(big), self.layer_on(small)
    layer_ok = ~s_on | (b_on & (big.kernel == small.kernel) & (big.expand >= small.expand)
                        & (big.se >= small.se))
    sep_ok = ~self.sep_active(small) | (self.sep_active(big)
                                        & (big.sep_kernel == small.sep_kernel))
    return (xp.all(layer_ok, -1) & xp.all(big.filters >= small.filters, -1) & sep_ok
            & (big.stem_kernel == small.stem_kernel))

  def grow_to_contain(self, arch: TunasArch, small: TunasArch) -> TunasArch:
    """Raise ``arch`` to contain ``small``: widths, expansions and SE to at least ``small``'s,
    ``small``'s running layers switched on with ``small``'s kernels, its stem kernel and
    sepconv."""
    xp, (arch, small) = base.prep(arch, small)
    s_on = self.layer_on(small)
    a_on = self.layer_on(arch)
    i32 = lambda x: xp.asarray(x).astype(np.int32)
    need = lambda a, s: i32(xp.where(s_on, xp.where(a_on, xp.maximum(a, s), s), a))
    on = xp.asarray(arch.on)
    small_opt_on = xp.asarray(small.on)
    sep_need = self.sep_active(small)
    return arch._replace(
        stem_kernel=i32(small.stem_kernel),
        sep_on=i32(xp.maximum(arch.sep_on, small.sep_on)),
        sep_kernel=i32(xp.where(sep_need, small.sep_kernel, arch.sep_kernel)),
        filters=i32(xp.maximum(arch.filters, small.filters)),
        on=i32(xp.maximum(on, small_opt_on)),
        kernel=i32(xp.where(s_on, small.kernel, arch.kernel)),
        expand=need(arch.expand, small.expand), se=need(arch.se, small.se))

  # -- analytic costs ---------------------------------------------------------------------------
  def _costs(self, arch: TunasArch, params: bool):
    xp, arch = base.prep(arch)
    dt = base.cost_dtype(xp)
    w = self.widths(arch).astype(dt)
    on = self.layer_on(arch)
    ks = xp.asarray(self.kernel_choices, dt)
    exp = xp.asarray(self.expand_choices, np.float32 if xp is np else jnp.float32)
    c0 = w[..., 0]
    sk = xp.asarray(self.stem_kernels, dt)[arch.stem_kernel]
    if params:
      total = sk * sk * 3 * c0 + 2 * c0
    else:
      r = xp.asarray(self.resolutions)[arch.resolution].astype(dt)
      h = base.down(r, self.stem_stride, xp)
      total = h * h * sk * sk * 3 * c0
    # sepconv
    kk = ks[arch.sep_kernel]
    c1 = w[..., self.sep_group]
    sep = ((kk * kk * c0 + 2 * c0 + c0 * c1 + 2 * c1) if params else
           h * h * (kk * kk * c0 + c0 * c1))
    total = total + xp.where(self.sep_active(arch), sep, 0)
    for b in self.layers:
      c_in, c_out = w[..., b.in_group], w[..., b.out_group]
      mid = _scale(xp, c_in * exp[arch.expand[..., b.index]], dt)
      k = ks[arch.kernel[..., b.index]]
      se = xp.asarray(arch.se[..., b.index]).astype(dt)
      se_h = _scale(xp, mid * 0.25, dt)
      if params:
        cost = (c_in * mid + 2 * mid + k * k * mid + 2 * mid + se * (2 * mid * se_h + se_h + mid)
                + mid * c_out + 2 * c_out)
      else:
        h_out = base.down(h, b.stride, xp)
        cost = h * h * c_in * mid + h_out * h_out * (k * k * mid + mid * c_out) + se * 2 * mid * se_h
        h = h_out
      total = total + xp.where(on[..., b.index], cost, 0)
    c = w[..., self.layers[-1].out_group]
    hg = self.head_groups
    ch = w[..., hg[0]]
    if params:
      total = total + c * ch + 2 * ch
      if self.v3:
        ch2 = w[..., hg[1]]
        total = total + ch * ch2 + ch2
        ch = ch2
      return total + (ch + 1) * self.num_classes
    total = total + h * h * c * ch
    if self.v3:
      ch2 = w[..., hg[1]]
      total = total + ch * ch2
      ch = ch2
    return total + ch * self.num_classes

  def macs(self, arch: TunasArch):
    """Multiply-accumulates of one image (exact ints for concrete archs, float32 under jit)."""
    return self._costs(arch, params=False)

  def params(self, arch: TunasArch):
    """Parameters of the subnet (conv/linear weights, biases, BN scale and bias)."""
    return self._costs(arch, params=True)

  # -- JSON --------------------------------------------------------------------------------------
  def layer_name(self, kernel: int, expand: int, se: int) -> str:
    return (f"e{base.readable(self.expand_choices[expand])}_k{self.kernel_choices[kernel]}"
            f"{'_se' if se else ''}")

  def arch_to_dict(self, arch: TunasArch) -> dict:
    """Readable form: widths per group, ``"zero"`` or ``"e6_k5[_se]"`` per layer."""
    a = self.validate(arch, population=False)
    on = self.layer_on(a)
    return {"space": self.name, "resolution": int(self.resolutions[a.resolution]),
            "stem_kernel": int(self.stem_kernels[a.stem_kernel]),
            "sepconv": (f"k{self.kernel_choices[a.sep_kernel]}" if self.sep_active(a)
                        else "zero"),
            "widths": [int(x) for x in self.widths(a)],
            "layers": [self.layer_name(a.kernel[i], a.expand[i], a.se[i]) if on[i] else "zero"
                       for i in range(len(self.layers))]}

  def arch_from_dict(self, obj: Mapping) -> TunasArch:
    if not isinstance(obj, Mapping):
      raise InvalidArchError(f"arch: expected a JSON object, got {type(obj).__name__}")
    base.json_keys(obj, ("space", "resolution", "stem_kernel", "sepconv", "widths", "layers"), "")
    if obj.get("space", self.name) != self.name:
      raise InvalidArchError(f"space: {obj['space']!r} does not match this space {self.name!r}")
    res = base.json_choice(base.json_get(obj, "resolution", ""), self.resolutions, "resolution")
    stem_k = base.json_choice(base.json_get(obj, "stem_kernel", ""), self.stem_kernels,
                              "stem_kernel")
    sep = base.json_get(obj, "sepconv", "")
    sep_names = [f"k{k}" for k in self.kernel_choices] + (["zero"] if self.v3 else [])
    if sep not in sep_names:
      raise InvalidArchError(f"sepconv: {sep!r} is not one of ({', '.join(sep_names)})")
    sep_on = int(sep != "zero") if self.v3 else 0  # index into sep_choices
    sep_k = 0 if sep == "zero" else self.kernel_choices.index(int(sep[1:]))
    widths = base.json_list(base.json_get(obj, "widths", ""), self.num_groups, "widths")
    filters = np.zeros(self.num_groups, np.int32)
    for g, v in enumerate(widths):
      valid = [w for w, ok in zip(self.group_widths[g], self._filter_mask[g]) if ok]
      width = valid[base.json_choice(v, valid, f"widths[{g}]")]
      filters[g] = self.group_widths[g].index(width)  # the first (valid) multiplier
    names = base.json_list(base.json_get(obj, "layers", ""), len(self.layers), "layers")
    n = len(self.layers)
    kernel, expand, se = (np.zeros(n, np.int32) for _ in range(3))
    on = np.ones(len(self.optional_layers), np.int32)
    allowed = {self.layer_name(k, e, s): (k, e, s) for k in range(len(self.kernel_choices))
               for e in range(len(self.expand_choices)) for s in range(len(self.se_choices))}
    for i, (b, v) in enumerate(zip(self.layers, names)):
      if v == "zero" and b.optional >= 0:
        on[b.optional] = 0
        continue
      if v not in allowed:
        opts = list(allowed) + (["zero"] if b.optional >= 0 else [])
        raise InvalidArchError(f"layers[{i}]: {v!r} is not one of ({', '.join(opts)})")
      kernel[i], expand[i], se[i] = allowed[v]
    return TunasArch(resolution=np.int32(res), stem_kernel=np.int32(stem_k),
                     sep_kernel=np.int32(sep_k), sep_on=np.int32(sep_on), filters=filters, on=on,
                     kernel=kernel, expand=expand, se=se)

  def format(self, arch: TunasArch) -> str:
    """One-line summary, e.g. ``r32 w[8,8|8,16,...]: e3_k5 zero ... | e6_k7 ...`` (blocks by |)."""
    j = self.arch_to_dict(arch)
    parts, prev = [], None
    for b, name in zip(self.layers, j["layers"]):
      if prev is not None and b.block != prev:
        parts.append("|")
      parts.append(name)
      prev = b.block
    return (f"r{j['resolution']} s{j['stem_kernel']} sep:{j['sepconv']} "
            f"w{j['widths']}: " + " ".join(parts))


def _scale(xp, v, dt):
  """``scale_filters`` on arrays (values already multiplied)."""
  out = xp.maximum(8, xp.floor(v / 8 + 0.5) * 8)
  return out.astype(dt)


@dataclasses.dataclass(frozen=True)
class ProxylessNASSpace(TunasSpace):
  """TuNAS's ProxylessNAS space: 21 IBN layers, expansion {3, 6} x kernel {3, 5, 7}, 16 of the
  layers may be zero (module doc)."""
  name = "proxylessnas"
  base_widths = (32, 16, 32, 40, 80, 96, 192, 320, 1280)
  block_depths = (4, 4, 4, 4, 4, 1)
  block_strides = (2, 2, 2, 1, 2, 1)
  block_acts = ("relu",) * 6
  searched_widths = False
  v3 = False


@dataclasses.dataclass(frozen=True)
class ProxylessNASEnlargedSpace(ProxylessNASSpace):
  """ProxylessNAS-Enlarged: the ProxylessNAS tower with all 9 widths searched (multipliers
  1/2 .. 2 of base widths 16 16 16 32 64 128 256 512 1024)."""
  name = "proxylessnas_enlarged"
  base_widths = (16, 16, 16, 32, 64, 128, 256, 512, 1024)
  searched_widths = True


@dataclasses.dataclass(frozen=True)
class MobileNetV3LikeSpace(TunasSpace):
  """TuNAS's MobileNetV3-Like space (module doc)."""
  name = "mobilenet_v3_like"
  base_widths = (16, 16, 32, 64, 128, 256, 512, 1024)
  block_depths = (4, 4, 4, 4, 4)
  block_strides = (2, 2, 2, 1, 2)
  block_acts = ("relu", "relu", "h_swish", "h_swish", "h_swish")
  searched_widths = True
  v3 = True

