"""SCARLET-NAS's scalable search spaces S1 and S2 (Chu et al., ICCVW 2021).

Macro structure (widths for ``width_mult=1``, each ``make_divisible(w * m, 8)``; layout of the
released SCARLET-A/B/C models)::

  stem        3x3 conv to 32, stride 2 (ImageNet) / 1 (small images), BN, ReLU6
  sepconv     3x3 depthwise, BN, ReLU6, 1x1 conv to 16, BN            (fixed)
  layers 1-19 widths 32 32 | 40 x4 | 80 x4 | 96 x4 | 192 x4 | 320, stride 2 at layers 1, 3, 7
              and 15 (layer 1 has stride 1 on the small stem: total stride 8 for 32 px inputs)
  head        1x1 conv to 1280, BN, ReLU6, global average pool, linear classifier

Every one of the 19 layers chooses an inverted bottleneck -- 1x1 expand to ``round(c_in * e)``
channels, h-swish, k x k depthwise (carries the stride), h-swish, [squeeze-excite on the
expanded channels, reduction 4, h-sigmoid gate], 1x1 project, BN, residual when stride 1 and
``c_in == c_out`` -- with e in {3, 6} and k in {3, 5, 7}, or a *skip*.  S1 has 7 choices per
layer (7^19 networks), S2 adds an SE variant of every bottleneck (13 choices, 13^19).  A skip is
allowed at every layer, also where the stride or the width changes (SCARLET-NAS's "all identity"
model keeps only the stem and the head): in the supernet a skip is either a plain subsample +
zero-pad of the channels, or with ``els`` the equivariant learnable stabilizer (a bias-free 1x1
conv to ``c_out``, no BN, no activation).  On export the skip becomes a plain subsample and its
linear map is folded into the next layer's first convolution (see ``nn/scarlet.py``).

Choice indices (field ``op``): 0 is the skip, then the bottlenecks in SCARLET's numbering
``o = (e - 3) + (k - 3) / 2`` (e3k3, e3k5, e3k7, e6k3, e6k5, e6k7), then in S2 the same six with
SE.  So the smallest index is the shallowest choice and the largest the biggest block.

Costs (MACs and parameters) are those of the *exported* subnet: a skip costs nothing, the
following layer's expand conv (or the head conv) reads the channels the skip passed through, and
with ELS the first residual bottleneck after a run of skips carries the folded 1x1 map on its
shortcut (its residual needs the transformed input).  MACs count conv/linear multiply-adds only
(OFA's counter; OFA prints them as "MFLOPs").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax.spaces import base
from regnas_jax.spaces.base import InvalidArchError, InvalidSpaceError

STEM_WIDTHS = (32, 16, 1280)  # stem conv, sepconv output, head conv
LAYER_WIDTHS = (32, 32, 40, 40, 40, 40, 80, 80, 80, 80, 96, 96, 96, 96, 192, 192, 192, 192, 320)
STEMS = {  # stem stride, per-layer strides
    "imagenet": (2, tuple(2 if i in (0, 2, 6, 14) else 1 for i in range(19))),
    "small": (1, tuple(2 if i in (2, 6, 14) else 1 for i in range(19))),
}
DEFAULT_RESOLUTIONS = {"imagenet": (224,), "small": (32,)}
SE_REDUCTION = 4


class ScarletArch(NamedTuple):
  """Choice indices of one SCARLET subnet (add a leading axis for a population)."""
  resolution: jax.Array  # ()    index into space.resolutions
  op: jax.Array          # (19,) per layer: 0 = skip, then the bottleneck choices (module doc)


@dataclasses.dataclass(frozen=True)
class LayerLayout:
  """Static facts of one searchable layer of the supernet."""
  index: int
  in_ch: int
  out_ch: int
  stride: int
  mid_choices: tuple     # expanded channels per expand choice
  se_choices: tuple      # SE hidden units per expand choice

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.in_ch == self.out_ch

  @property
  def name(self) -> str:
    return f"layer{self.index + 1}"


@dataclasses.dataclass(frozen=True)
class ScarletS1Space(base.SearchSpace):
  """SCARLET's S1: 19 layers, each a {3, 6} x {3, 5, 7} inverted bottleneck or a skip.

  Args:
    width_mult: fixed width multiplier of the supernet (1.0 is SCARLET's).
    stem: ``'imagenet'`` (total stride 32) or ``'small'`` (total stride 8, for 32 px inputs).
    num_classes: classifier outputs.
    resolutions: input sizes the search may choose (default 224 / 32 by stem).
    els: skips carry the equivariant learnable stabilizer (a 1x1 conv) in the supernet.  This
      changes the exported subnets (folded maps, see the module doc), hence their costs, so it
      is a property of the space; the supernet reads it from here.
    expand_choices, kernel_choices: the bottleneck choices (SCARLET: 3/6 and 3/5/7).
  """
  name = "scarlet_s1"
  arch_type = ScarletArch
  has_se = False

  width_mult: float = 1.0
  stem: str = "imagenet"
  num_classes: int = 1000
  resolutions: tuple | None = None
  els: bool = True
  expand_choices: tuple = (3, 6)
  kernel_choices: tuple = (3, 5, 7)

  # The skip choice, for generic search operators (e.g. NSGA-II's pruning mutation).
  skip_field = "op"
  skip_index = 0

  def __post_init__(self):
    self._check_common(STEMS, DEFAULT_RESOLUTIONS)
    for name in ("expand_choices", "kernel_choices"):
      object.__setattr__(self, name, base.check_choices(name, getattr(self, name)))
    if any(k % 2 == 0 for k in self.kernel_choices):
      raise InvalidSpaceError(
          f"kernel_choices: kernel sizes must be odd, got {self.kernel_choices}")
    if not isinstance(self.els, bool):
      raise InvalidSpaceError(f"els: must be true or false, got {self.els!r}")

  # -- static layout ------------------------------------------------------------------------
  @property
  def stem_stride(self) -> int:
    return STEMS[self.stem][0]

  @functools.cached_property
  def widths(self) -> tuple:
    """Channel counts: stem conv, sepconv output, head conv."""
    return tuple(base.make_divisible(w * self.width_mult, 8) for w in STEM_WIDTHS)

  @functools.cached_property
  def layers(self) -> tuple[LayerLayout, ...]:
    out, c_in = [], self.widths[1]
    for i, (w, s) in enumerate(zip(LAYER_WIDTHS, STEMS[self.stem][1])):
      c_out = base.make_divisible(w * self.width_mult, 8)
      mids = tuple(int(round(c_in * e)) for e in self.expand_choices)
      out.append(LayerLayout(i, c_in, c_out, s, mids, tuple(m // SE_REDUCTION for m in mids)))
      c_in = c_out
    return tuple(out)

  @functools.cached_property
  def op_table(self) -> np.ndarray:
    """Int ``(n_ops, 4)``: per op index (is_skip, expand index, kernel index, se)."""
    rows = [(1, 0, 0, 0)]
    for se in ((0, 1) if self.has_se else (0,)):
      for e in range(len(self.expand_choices)):
        for k in range(len(self.kernel_choices)):
          rows.append((0, e, k, se))
    return np.array(rows, np.int32)

  @functools.cached_property
  def op_names(self) -> tuple[str, ...]:
    names = []
    for skip, e, k, se in self.op_table:
      names.append("skip" if skip else (f"e{base.readable(self.expand_choices[e])}_"
                                        f"k{self.kernel_choices[k]}{'_se' if se else ''}"))
    return tuple(names)

  @property
  def skip_allowed(self) -> np.ndarray:
    return np.ones(len(self.layers), bool)

  def fields(self) -> tuple[base.Field, ...]:
    return (base.Field("resolution", (), self.resolutions),
            base.Field("op", (len(self.layers),), self.op_names))

  def num_archs(self) -> int:
    """Distinct networks per resolution: 7^19 (S1) or 13^19 (S2)."""
    return len(self.op_names) ** len(self.layers)

  # -- arch helpers (jit/vmap friendly) -----------------------------------------------------
  def decode(self, arch: ScarletArch):
    """``(is_skip, expand_idx, kernel_idx, se)``, each int ``(..., 19)``, from the op indices."""
    xp, arch = base.prep(arch)
    t = xp.asarray(self.op_table)[arch.op]
    return t[..., 0], t[..., 1], t[..., 2], t[..., 3]

  def _encode(self, xp, skip, e, k, se):
    """Op index of (skip, e, k, se) arrays (inverse of :meth:`decode`)."""
    ne, nk = len(self.expand_choices), len(self.kernel_choices)
    return xp.where(skip > 0, 0, 1 + se * ne * nk + e * nk + k).astype(np.int32)

  def contains(self, big: ScarletArch, small: ScarletArch):
    """Weight inclusion: every bottleneck of ``small`` sits in a bottleneck of ``big`` with at
    least its expand ratio and kernel, and SE if ``small`` has it (first-N channels, centre
    kernels); a skip of ``small`` is contained by anything.

    Exact for plain skips.  With ELS a skip's map is folded into the next convolution on export,
    so ``small``'s folded weights are not literally a slice of ``big``'s: inclusion then holds
    for the supernet weights, not the exported ones.
    """
    xp, (big, small) = base.prep(big, small)
    bs, be, bk, bse = self.decode(big)
    ss, se_, sk, sse = self.decode(small)
    ok = (ss > 0) | ((bs == 0) & (be >= se_) & (bk >= sk) & (bse >= sse))
    return xp.all(ok, axis=-1)

  def grow_to_contain(self, arch: ScarletArch, small: ScarletArch) -> ScarletArch:
    """Raise each layer where ``small`` has a bottleneck to at least its expand, kernel and SE."""
    xp, (arch, small) = base.prep(arch, small)
    a_s, a_e, a_k, a_se = self.decode(arch)
    s_s, s_e, s_k, s_se = self.decode(small)
    need = s_s == 0
    up = lambda a, s: xp.where(need, xp.where(a_s > 0, s, xp.maximum(a, s)), a)
    op = self._encode(xp, xp.where(need, 0, a_s), up(a_e, s_e), up(a_k, s_k), up(a_se, s_se))
    return arch._replace(op=op)

  def mutate(self, key: jax.Array, arch: ScarletArch, prob: float = 0.1,
             resolution_prob: float | None = None) -> ScarletArch:
    """Each layer resamples its op with ``prob``; the resolution with ``resolution_prob``."""
    rprob = prob if resolution_prob is None else resolution_prob
    kb, ko, kr, krv = jax.random.split(key, 4)
    n = len(self.layers)
    op = jnp.where(jax.random.bernoulli(kb, prob, (n,)),
                   jax.random.randint(ko, (n,), 0, len(self.op_names)), arch.op)
    res = jnp.where(jax.random.bernoulli(kr, rprob),
                    jax.random.randint(krv, (), 0, len(self.resolutions)), arch.resolution)
    return ScarletArch(jnp.asarray(res, jnp.int32), jnp.asarray(op, jnp.int32))

  # -- analytic costs of the exported subnet ---------------------------------------------------
  def _costs(self, arch: ScarletArch, params: bool):
    xp, arch = base.prep(arch)
    dt = base.cost_dtype(xp)
    skip, e, k, se = self.decode(arch)
    w = self.widths
    if params:
      total = 27 * w[0] + 2 * w[0] + 9 * w[0] + 2 * w[0] + w[0] * w[1] + 2 * w[1]
    else:
      r = xp.asarray(self.resolutions)[arch.resolution].astype(dt)
      h = base.down(r, self.stem_stride, xp)
      total = h * h * (27 * w[0] + 9 * w[0] + w[0] * w[1])
    real = xp.zeros(skip.shape[:-1], dt) + w[1]   # channels the stream really carries
    pending = xp.zeros(skip.shape[:-1], bool)     # a skip's map waits to be folded
    for i, b in enumerate(self.layers):
      mb = skip[..., i] == 0
      m = xp.asarray(b.mid_choices, dt)[e[..., i]]
      kk = xp.asarray(self.kernel_choices, dt)[k[..., i]]
      s_h = xp.asarray(b.se_choices, dt)[e[..., i]] * se[..., i]
      short = (b.residual and self.els) * pending
      if params:
        cost = (real * m + 2 * m + kk * kk * m + 2 * m + 2 * m * s_h + s_h + m * se[..., i]
                + m * b.out_ch + 2 * b.out_ch + short * real * b.out_ch)
      else:
        h_out = base.down(h, b.stride, xp)
        cost = (h * h * real * m + h_out * h_out * (kk * kk * m + m * b.out_ch)
                + 2 * m * s_h + short * h * h * real * b.out_ch)
        h = h_out
      total = total + xp.where(mb, cost, 0)
      real = xp.where(mb, b.out_ch, real)
      pending = ~mb
    if params:
      return total + real * w[2] + 2 * w[2] + (w[2] + 1) * self.num_classes
    return total + h * h * real * w[2] + w[2] * self.num_classes

  def macs(self, arch: ScarletArch):
    """Multiply-accumulates of one image through the exported subnet (exact ints for concrete
    archs, float32 under ``jit``/``vmap``)."""
    return self._costs(arch, params=False)

  def params(self, arch: ScarletArch):
    """Parameters of the exported subnet (conv/linear weights, biases, BN scale and bias)."""
    return self._costs(arch, params=True)

  # -- JSON ----------------------------------------------------------------------------------
  def arch_to_dict(self, arch: ScarletArch) -> dict:
    """Readable form: ``{"space", "resolution", "layers": ["e6_k7_se", "skip", ...]}``."""
    a = self.validate(arch, population=False)
    return {"space": self.name, "resolution": int(self.resolutions[a.resolution]),
            "layers": [self.op_names[i] for i in a.op]}

  def arch_from_dict(self, obj: Mapping) -> ScarletArch:
    if not isinstance(obj, Mapping):
      raise InvalidArchError(f"arch: expected a JSON object, got {type(obj).__name__}")
    base.json_keys(obj, ("space", "resolution", "layers"), "")
    if obj.get("space", self.name) != self.name:
      raise InvalidArchError(f"space: {obj['space']!r} does not match this space {self.name!r}")
    res = base.json_choice(base.json_get(obj, "resolution", ""), self.resolutions, "resolution")
    names = base.json_list(base.json_get(obj, "layers", ""), len(self.layers), "layers")
    op = np.zeros(len(self.layers), np.int32)
    for i, v in enumerate(names):
      if v not in self.op_names:
        raise InvalidArchError(f"layers[{i}]: {v!r} is not one of ({', '.join(self.op_names)})")
      op[i] = self.op_names.index(v)
    return ScarletArch(np.int32(res), op)

  def format(self, arch: ScarletArch) -> str:
    """One-line summary, e.g. ``r224: e3_k7 e6_k5 | skip e3_k5 ...`` (width changes split by |)."""
    j = self.arch_to_dict(arch)
    parts, prev = [], None
    for b, name in zip(self.layers, j["layers"]):
      if prev is not None and b.out_ch != prev:
        parts.append("|")
      parts.append(name)
      prev = b.out_ch
    return f"r{j['resolution']}: " + " ".join(parts)


@dataclasses.dataclass(frozen=True)
class ScarletS2Space(ScarletS1Space):
  """SCARLET's S2: S1 plus a squeeze-excite variant of every bottleneck (13 choices per layer)."""
  name = "scarlet_s2"
  has_se = True
