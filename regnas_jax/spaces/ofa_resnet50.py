"""The OFA ResNet50 search space (Cai et al., ICLR 2020; layout of OFA's ``ofa_resnets.py``).

Macro structure (channel counts for the largest width choice and ``width_mult=1``; every width is
``make_divisible(base * width_mult * choice, 8)``)::

  stem        3x3 conv to 32 (stride 2 on ImageNet, 1 on small images), BN, ReLU
              3x3 conv 32 -> 32, BN, ReLU, residual             (the skippable middle layer)
              3x3 conv to 64, BN, ReLU
              3x3 max-pool, stride 2                             (ImageNet stem only)
  stage 1..4  2+d, 2+d, 4+d, 2+d bottleneck blocks (d in 0, 1, 2), outputs 256 512 1024 2048,
              strides 1 2 2 2; a block is 1x1 conv -> 3x3 conv (carries the stride) -> 1x1 conv,
              BN after each, ReLU after the sum with the shortcut.  The first block of a stage
              has a ResNet-D shortcut: average pool (kernel = stride, ceil mode) + 1x1 conv + BN.
  head        global average pool, linear classifier

Elastic choices: the stem's middle layer on/off, per stage the extra depth (the first
``base + d`` blocks run), per block the expand ratio (middle channels
``make_divisible(round(out_ch * e), 8)``, relative to the block's *output* width, so 0.25 is the
classic ResNet), six width multipliers (stem middle width, stem output width, one per stage),
and the input resolution.

Costs follow OFA's counter: multiply-accumulates of convolutions and the classifier only
(pooling, BN, activations and the residual sums are free); OFA prints these as "MFLOPs".
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

STEM_BASE, STAGE_BASE = 64, (256, 512, 1024, 2048)
STEMS = {  # stem conv stride, max-pool after the stem, per-stage strides
    "imagenet": (2, True, (1, 2, 2, 2)),
    "small": (1, False, (1, 2, 2, 2)),  # total stride 8: 32 px inputs end at 4x4
}
DEFAULT_RESOLUTIONS = {"imagenet": tuple(range(128, 225, 16)), "small": (24, 28, 32)}


class ResNetArch(NamedTuple):
  """Choice indices of one OFA-ResNet subnet (add a leading axis for a population)."""
  resolution: jax.Array  # ()    index into space.resolutions
  stem_depth: jax.Array  # ()    index into (0, 1): the stem's middle layer skipped / run
  depth: jax.Array       # (4,)  index into space.depth_choices (extra blocks), per stage
  expand: jax.Array      # (18,) index into space.expand_choices, per block (stage-major)
  width: jax.Array       # (6,)  index into space.width_choices: stem middle, stem out, 4 stages


@dataclasses.dataclass(frozen=True)
class BottleneckLayout:
  """Static facts of one elastic bottleneck block of the supernet."""
  stage: int
  index: int             # position in its stage
  in_choices: tuple      # input channels per width choice of the layer feeding it
  out_choices: tuple     # output channels per width choice of its stage
  stride: int
  mid_table: tuple       # middle channels [width choice][expand choice]

  @property
  def downsample(self) -> bool:
    """First block of a stage: ResNet-D shortcut (avg pool + 1x1 conv + BN)."""
    return self.index == 0

  @property
  def max_mid(self) -> int:
    return max(max(r) for r in self.mid_table)

  @property
  def name(self) -> str:
    return f"stage{self.stage + 1}_block{self.index + 1}"


@dataclasses.dataclass(frozen=True)
class OFAResNet50Space(base.SearchSpace):
  """OFA-ResNet50: elastic stem, depth, expand ratio, width and resolution.

  Args:
    width_mult: fixed multiplier of every base width (1.0 is ResNet50's 64/256/.../2048; small
      values give CPU-sized supernets with the same structure).
    stem: ``'imagenet'`` (stride-2 stem + max-pool, total stride 32) or ``'small'`` (no
      downsampling in the stem, total stride 8, for 32 px inputs).
    num_classes: classifier outputs.
    resolutions: input sizes the search may choose (default: 128..224 step 16 for the ImageNet
      stem, 24/28/32 for the small stem).
    base_depths: blocks per stage of the smallest network (OFA: 2, 2, 4, 2).
    depth_choices: extra blocks per stage (OFA: 0, 1, 2); the supernet has
      ``base + max(depth_choices)`` blocks per stage.
    expand_choices: bottleneck expand ratios relative to the output width (OFA: 0.2, 0.25, 0.35).
    width_choices: elastic width multipliers (OFA: 0.65, 0.8, 1.0).
  """
  name = "ofa_resnet50"
  arch_type = ResNetArch

  width_mult: float = 1.0
  stem: str = "imagenet"
  num_classes: int = 1000
  resolutions: tuple | None = None
  base_depths: tuple = (2, 2, 4, 2)
  depth_choices: tuple = (0, 1, 2)
  expand_choices: tuple = (0.2, 0.25, 0.35)
  width_choices: tuple = (0.65, 0.8, 1.0)

  def __post_init__(self):
    self._check_common(STEMS, DEFAULT_RESOLUTIONS)
    for name in ("expand_choices", "width_choices"):
      object.__setattr__(self, name, base.check_choices(name, getattr(self, name)))
    object.__setattr__(self, "depth_choices",
                       base.check_choices("depth_choices", self.depth_choices, positive=False))
    if any(not float(d).is_integer() or d < 0 for d in self.depth_choices):
      raise InvalidSpaceError(f"depth_choices: must be integers >= 0, got {self.depth_choices}")
    bd = tuple(self.base_depths)
    if len(bd) != 4 or any(not float(d).is_integer() or d < 1 for d in bd):
      raise InvalidSpaceError(f"base_depths: need 4 integers >= 1, got {self.base_depths}")
    object.__setattr__(self, "base_depths", tuple(int(d) for d in bd))
    object.__setattr__(self, "depth_choices", tuple(int(d) for d in self.depth_choices))

  # -- static layout ------------------------------------------------------------------------
  @property
  def stem_stride(self) -> int:
    return STEMS[self.stem][0]

  @property
  def max_pool(self) -> bool:
    return STEMS[self.stem][1]

  @property
  def stage_strides(self) -> tuple:
    return STEMS[self.stem][2]

  def _widths(self, base_ch: float) -> tuple:
    return tuple(base.make_divisible(base_ch * self.width_mult * w, 8) for w in self.width_choices)

  @functools.cached_property
  def stem_choices(self) -> tuple:
    """Channels per width choice: (stem middle, stem output); the middle is half the output."""
    out = self._widths(STEM_BASE)
    return tuple(base.make_divisible(c // 2, 8) for c in out), out

  @functools.cached_property
  def stage_choices(self) -> tuple:
    """Output channels per width choice, per stage."""
    return tuple(self._widths(b) for b in STAGE_BASE)

  @property
  def blocks_per_stage(self) -> tuple:
    return tuple(b + max(self.depth_choices) for b in self.base_depths)

  @property
  def num_blocks(self) -> int:
    return sum(self.blocks_per_stage)

  @functools.cached_property
  def blocks(self) -> tuple[BottleneckLayout, ...]:
    out, c_in = [], self.stem_choices[1]
    for s, n in enumerate(self.blocks_per_stage):
      c_out = self.stage_choices[s]
      mids = tuple(tuple(base.make_divisible(round(c * e), 8) for e in self.expand_choices)
                   for c in c_out)
      for j in range(n):
        out.append(BottleneckLayout(s, j, c_in, c_out, self.stage_strides[s] if j == 0 else 1,
                                    mids))
        c_in = c_out
    return tuple(out)

  @functools.cached_property
  def _block_stage(self) -> np.ndarray:
    return np.array([b.stage for b in self.blocks])

  @functools.cached_property
  def _block_pos(self) -> np.ndarray:
    return np.array([b.index for b in self.blocks])

  def fields(self) -> tuple[base.Field, ...]:
    return (base.Field("resolution", (), self.resolutions),
            base.Field("stem_depth", (), (0, 1)),
            base.Field("depth", (4,), self.depth_choices),
            base.Field("expand", (self.num_blocks,), self.expand_choices),
            base.Field("width", (6,), self.width_choices))

  def num_archs(self) -> int:
    """Distinct networks per resolution (OFA-ResNet50: about 2.5e12, counting one stem choice
    per stem depth and every width index)."""
    ne, nw = len(self.expand_choices), len(self.width_choices)
    total = 2 * nw * nw
    for b in self.base_depths:
      total *= nw * sum(ne ** (b + d) for d in self.depth_choices)
    return total

  # -- arch helpers (jit/vmap friendly) -----------------------------------------------------
  def stage_depths(self, arch: ResNetArch):
    """Int ``(..., 4)``: blocks run per stage."""
    xp, arch = base.prep(arch)
    return xp.asarray(self.base_depths) + xp.asarray(self.depth_choices)[arch.depth]

  def block_active(self, arch: ResNetArch):
    """Bool ``(..., num_blocks)``: which blocks the subnet runs (the first ``base + d``)."""
    xp, arch = base.prep(arch)
    return self._block_pos < xp.take(self.stage_depths(arch), self._block_stage, axis=-1)

  def stem_channels(self, arch: ResNetArch):
    """Ints ``(..., )`` x2: (stem middle channels, stem output channels)."""
    xp, arch = base.prep(arch)
    mid, out = (xp.asarray(c) for c in self.stem_choices)
    return mid[arch.width[..., 0]], out[arch.width[..., 1]]

  def stage_channels(self, arch: ResNetArch):
    """Int ``(..., 4)``: output channels of every stage."""
    xp, arch = base.prep(arch)
    table = xp.asarray(np.array(self.stage_choices))                    # (4, n_width)
    return table[np.arange(4), arch.width[..., 2:]]

  def mid_channels(self, arch: ResNetArch):
    """Int ``(..., num_blocks)``: middle channels of every block (width and expand of it)."""
    xp, arch = base.prep(arch)
    table = xp.asarray(np.array([b.mid_table for b in self.blocks]))   # (n, n_width, n_expand)
    w = xp.take(arch.width[..., 2:], self._block_stage, axis=-1)        # (..., n)
    return table[np.arange(self.num_blocks), w, arch.expand]

  def canonicalize(self, arch: ResNetArch) -> ResNetArch:
    """Set the expand ratio of blocks beyond the depth to the smallest choice."""
    xp, arch = base.prep(arch)
    act = self.block_active(arch)
    return arch._replace(expand=xp.where(act, arch.expand, 0).astype(arch.expand.dtype))

  def contains(self, big: ResNetArch, small: ResNetArch):
    """REG-NAS weight inclusion: does ``big`` hold every weight ``small`` uses?

    True iff ``big`` runs the stem's middle layer whenever ``small`` does, every stage of it is
    at least as deep and as wide, both stem widths are at least as large, and every block
    ``small`` uses has in ``big`` an expand ratio at least as large (first-N channels nest, and
    the middle width grows with both the width and the expand choice).  Resolution plays no
    part.  Works on single archs and, broadcast, on populations.
    """
    xp, (big, small) = base.prep(big, small)
    used = self.block_active(small)
    return ((big.stem_depth >= small.stem_depth)
            & xp.all(big.depth >= small.depth, axis=-1)
            & xp.all(big.width >= small.width, axis=-1)
            & xp.all(~used | (big.expand >= small.expand), axis=-1))

  def grow_to_contain(self, arch: ResNetArch, small: ResNetArch) -> ResNetArch:
    """Raise ``arch`` just enough to contain ``small`` (stem, depths, widths element-wise; the
    expand ratio of blocks ``small`` uses)."""
    xp, (arch, small) = base.prep(arch, small)
    used = self.block_active(small)
    mx = lambda a, b: xp.maximum(a, b).astype(a.dtype)
    return arch._replace(
        stem_depth=mx(arch.stem_depth, small.stem_depth), depth=mx(arch.depth, small.depth),
        width=mx(arch.width, small.width),
        expand=xp.where(used, xp.maximum(arch.expand, small.expand), arch.expand).astype(
            arch.expand.dtype))

  def mutate(self, key: jax.Array, arch: ResNetArch, prob: float = 0.1,
             resolution_prob: float | None = None) -> ResNetArch:
    """OFA-style mutation: each block resamples its expand ratio, each stage its depth, each
    width index and the stem depth their value, each with probability ``prob``; the resolution
    with ``resolution_prob`` (default ``prob``)."""
    rprob = prob if resolution_prob is None else resolution_prob
    ks = jax.random.split(key, 10)

    def resample(kb, kv, x, n_choices, p):
      flip = jax.random.bernoulli(kb, p, jnp.shape(x))
      return jnp.where(flip, jax.random.randint(kv, jnp.shape(x), 0, n_choices), x).astype(
          jnp.int32)

    return ResNetArch(
        resample(ks[0], ks[1], arch.resolution, len(self.resolutions), rprob),
        resample(ks[2], ks[3], arch.stem_depth, 2, prob),
        resample(ks[4], ks[5], arch.depth, len(self.depth_choices), prob),
        resample(ks[6], ks[7], arch.expand, len(self.expand_choices), prob),
        resample(ks[8], ks[9], arch.width, len(self.width_choices), prob))

  # -- analytic costs ------------------------------------------------------------------------
  def macs(self, arch: ResNetArch):
    """Multiply-accumulates of one forward pass of a single image (OFA's "FLOPs").

    Exact int64 for concrete archs; float32 under ``jit``/``vmap``.
    """
    xp, arch = base.prep(arch)
    dt = base.cost_dtype(xp)
    r = xp.asarray(self.resolutions)[arch.resolution].astype(dt)
    c0, c1 = (c.astype(dt) for c in self.stem_channels(arch))
    h = base.down(r, self.stem_stride, xp)
    total = h * h * 27 * c0 + h * h * 9 * c0 * c1 + xp.where(arch.stem_depth > 0,
                                                             h * h * 9 * c0 * c0, 0)
    if self.max_pool:
      h = base.down(h, 2, xp)
    act = self.block_active(arch)
    mids = self.mid_channels(arch).astype(dt)
    outs = self.stage_channels(arch).astype(dt)
    c_in = c1
    for i, b in enumerate(self.blocks):
      h_out = base.down(h, b.stride, xp)
      m, c_out = mids[..., i], outs[..., b.stage]
      cost = h * h * c_in * m + h_out * h_out * 9 * m * m + h_out * h_out * m * c_out
      if b.downsample:
        cost = cost + h_out * h_out * c_in * c_out
      total = total + xp.where(act[..., i], cost, 0)
      h, c_in = h_out, c_out
    return total + c_in * self.num_classes

  def params(self, arch: ResNetArch):
    """Parameters of the exact-shape subnet (conv weights, BN scale and bias, classifier)."""
    xp, arch = base.prep(arch)
    dt = base.cost_dtype(xp)
    c0, c1 = (c.astype(dt) for c in self.stem_channels(arch))
    total = 27 * c0 + 2 * c0 + 9 * c0 * c1 + 2 * c1 + xp.where(arch.stem_depth > 0,
                                                               9 * c0 * c0 + 2 * c0, 0)
    act = self.block_active(arch)
    mids = self.mid_channels(arch).astype(dt)
    outs = self.stage_channels(arch).astype(dt)
    c_in = c1
    for i, b in enumerate(self.blocks):
      m, c_out = mids[..., i], outs[..., b.stage]
      cost = c_in * m + 2 * m + 9 * m * m + 2 * m + m * c_out + 2 * c_out
      if b.downsample:
        cost = cost + c_in * c_out + 2 * c_out
      total = total + xp.where(act[..., i], cost, 0)
      c_in = c_out
    return total + (c_in + 1) * self.num_classes

  # -- JSON ----------------------------------------------------------------------------------
  def arch_to_dict(self, arch: ResNetArch) -> dict:
    """Readable form: resolution, stem (middle layer, widths) and per stage its extra depth,
    width multiplier and the expand ratios of its used blocks."""
    a = self.validate(arch, population=False)
    wc = self.width_choices
    stages, start = [], 0
    for s, n in enumerate(self.blocks_per_stage):
      d = int(self.depth_choices[a.depth[s]])
      stages.append({"extra_depth": d, "width": base.readable(wc[a.width[2 + s]]),
                     "expand": [base.readable(self.expand_choices[a.expand[start + j]])
                                for j in range(self.base_depths[s] + d)]})
      start += n
    return {"space": self.name, "resolution": int(self.resolutions[a.resolution]),
            "stem": {"middle_layer": bool(a.stem_depth), "width_middle": base.readable(wc[a.width[0]]),
                     "width_out": base.readable(wc[a.width[1]])},
            "stages": stages}

  def arch_from_dict(self, obj: Mapping) -> ResNetArch:
    """Parse :meth:`arch_to_dict` output; blocks beyond a stage's depth take the smallest
    choice."""
    if not isinstance(obj, Mapping):
      raise InvalidArchError(f"arch: expected a JSON object, got {type(obj).__name__}")
    base.json_keys(obj, ("space", "resolution", "stem", "stages"), "")
    if obj.get("space", self.name) != self.name:
      raise InvalidArchError(f"space: {obj['space']!r} does not match this space {self.name!r}")
    res = base.json_choice(base.json_get(obj, "resolution", ""), self.resolutions, "resolution")
    stem = base.json_get(obj, "stem", "")
    if not isinstance(stem, Mapping):
      raise InvalidArchError(f"stem: expected a JSON object, got {stem!r}")
    base.json_keys(stem, ("middle_layer", "width_middle", "width_out"), "stem")
    mid_layer = base.json_get(stem, "middle_layer", "stem")
    if not isinstance(mid_layer, bool):
      raise InvalidArchError(f"stem.middle_layer: expected true or false, got {mid_layer!r}")
    width = np.zeros(6, np.int32)
    for i, key in enumerate(("width_middle", "width_out")):
      width[i] = base.json_choice(base.json_get(stem, key, "stem"), self.width_choices,
                                  f"stem.{key}")
    stages = base.json_list(base.json_get(obj, "stages", ""), 4, "stages")
    depth, expand = np.zeros(4, np.int32), np.zeros(self.num_blocks, np.int32)
    start = 0
    for s, st in enumerate(stages):
      where = f"stages[{s}]"
      base.json_keys(st if isinstance(st, Mapping) else {}, ("extra_depth", "width", "expand"),
                     where)
      depth[s] = base.json_choice(base.json_get(st, "extra_depth", where), self.depth_choices,
                                  f"{where}.extra_depth")
      width[2 + s] = base.json_choice(base.json_get(st, "width", where), self.width_choices,
                                      f"{where}.width")
      n = self.base_depths[s] + self.depth_choices[depth[s]]
      vals = base.json_list(base.json_get(st, "expand", where), n, f"{where}.expand")
      for j, v in enumerate(vals):
        expand[start + j] = base.json_choice(v, self.expand_choices, f"{where}.expand[{j}]")
      start += self.blocks_per_stage[s]
    return ResNetArch(np.int32(res), np.int32(mid_layer), depth, expand, width)

  def format(self, arch: ResNetArch) -> str:
    """One-line summary, e.g. ``r160 stem+ w.65/.8: w1 e.2 e.25 / ...`` (stages split by /)."""
    j = self.arch_to_dict(arch)
    st = j["stem"]
    f = lambda v: f"{v:g}".lstrip("0") if v < 1 else f"{v:g}"
    parts = [f"w{f(s['width'])} " + " ".join(f"e{f(e)}" for e in s["expand"])
             for s in j["stages"]]
    return (f"r{j['resolution']} stem{'+' if st['middle_layer'] else '-'} "
            f"w{f(st['width_middle'])}/{f(st['width_out'])}: " + " / ".join(parts))
