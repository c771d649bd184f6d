"""The OFA MobileNetV3 search space (Cai et al., ICLR 2020; layout of OFA's ``ofa_mbv3.py``).

Macro structure (widths for width multiplier 1.0, all rounded with ``make_divisible(w * m, 8)``)::

  stem        3x3 conv, 16 ch, stride 2 (ImageNet) / 1 (small images), BN, h-swish
  first block MBConv expand 1, kernel 3, 16 -> 16, ReLU, residual      (fixed)
  stage 1..5  up to 4 MBConv blocks each, widths 24 40 80 112 160,
              strides 2 2 2 1 2 (ImageNet) / 1 2 2 1 2 (small images),
              activation relu relu h-swish h-swish h-swish, SE off on off on on
  head        1x1 conv 960 + BN + h-swish, global average pool,
              1x1 conv 1280 (no BN, no bias) + h-swish, linear classifier

Elastic choices: per stage the depth (first d of 4 blocks), per block the kernel size and the
expand ratio (middle channels ``make_divisible(round(c_in * e), 8)``), and the input resolution.
SE blocks squeeze to ``make_divisible(mid // 4, 8)`` channels.

Costs follow OFA's counter (``ofa/utils/flops_counter.py``): multiply-accumulates of conv and
linear layers only (``c_in/groups * k*k * output elements``; biases, BN, activations and pooling
are free).  OFA prints this number as "MFLOPs"; we call it MACs.
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

BASE_WIDTHS = (16, 16, 24, 40, 80, 112, 160, 960, 1280)  # stem, first block, 5 stages, head
STAGE_ACTS = ("relu", "relu", "h_swish", "h_swish", "h_swish")
STAGE_SE = (False, True, False, True, True)
STEMS = {  # stem stride, per-stage strides
    "imagenet": (2, (2, 2, 2, 1, 2)),
    "small": (1, (1, 2, 2, 1, 2)),  # total stride 8: 32 px inputs end at 4x4
}
DEFAULT_RESOLUTIONS = {"imagenet": tuple(range(128, 225, 16)), "small": (24, 28, 32)}
SE_REDUCTION = 4


class MBV3Arch(NamedTuple):
  """Choice indices of one OFA-MobileNetV3 subnet (add a leading axis for a population)."""
  resolution: jax.Array  # ()    index into space.resolutions
  depth: jax.Array       # (5,)  index into space.depth_choices, per stage
  kernel: jax.Array      # (20,) index into space.kernel_choices, per block (stage-major)
  expand: jax.Array      # (20,) index into space.expand_choices, per block


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Static facts of one elastic MBConv block of the supernet."""
  stage: int
  index: int            # position in its stage
  in_ch: int
  out_ch: int
  stride: int
  act: str
  se: bool
  mid_choices: tuple    # middle channels per expand choice
  se_choices: tuple     # SE hidden channels per expand choice (0 without SE)

  @property
  def residual(self) -> bool:
    return self.stride == 1 and self.in_ch == self.out_ch

  @property
  def name(self) -> str:
    return f"stage{self.stage + 1}_block{self.index + 1}"


@dataclasses.dataclass(frozen=True)
class OFAMobileNetV3Space(base.SearchSpace):
  """OFA-MobileNetV3: 5 elastic stages of up to 4 blocks, elastic kernel/expand/depth/resolution.

  Args:
    width_mult: fixed width multiplier of the supernet (OFA publishes 1.0 and 1.2).
    stem: ``'imagenet'`` (total stride 32) or ``'small'`` (total stride 8, for 32 px inputs).
    num_classes: classifier outputs.
    resolutions: input sizes the search may choose (default: 128..224 step 16 for the ImageNet
      stem, 24/28/32 for the small stem).
    kernel_choices, expand_choices, depth_choices: ascending choice lists (OFA: 3/5/7, 3/4/6,
      2/3/4); the supernet has ``max(depth_choices)`` blocks per stage.
  """
  name = "ofa_mbv3"
  arch_type = MBV3Arch

  width_mult: float = 1.0
  stem: str = "imagenet"
  num_classes: int = 1000
  resolutions: tuple | None = None
  kernel_choices: tuple = (3, 5, 7)
  expand_choices: tuple = (3, 4, 6)
  depth_choices: tuple = (2, 3, 4)

  def __post_init__(self):
    self._check_common(STEMS, DEFAULT_RESOLUTIONS)
    for name in ("kernel_choices", "expand_choices", "depth_choices"):
      object.__setattr__(self, name, base.check_choices(name, getattr(self, name)))
    if any(k % 2 == 0 for k in self.kernel_choices):
      raise InvalidSpaceError(f"kernel_choices: kernel sizes must be odd, got {self.kernel_choices}")
    if any(not float(d).is_integer() for d in self.depth_choices):
      raise InvalidSpaceError(f"depth_choices: must be integers, got {self.depth_choices}")

  # -- static layout ------------------------------------------------------------------------
  @property
  def stem_stride(self) -> int:
    return STEMS[self.stem][0]

  @property
  def stage_strides(self) -> tuple:
    return STEMS[self.stem][1]

  @functools.cached_property
  def widths(self) -> tuple:
    """Channel counts: stem, first block, five stages, final expand, feature mix."""
    return tuple(base.make_divisible(w * self.width_mult, 8) for w in BASE_WIDTHS)

  @property
  def blocks_per_stage(self) -> int:
    return int(max(self.depth_choices))

  @property
  def num_blocks(self) -> int:
    return 5 * self.blocks_per_stage

  @functools.cached_property
  def blocks(self) -> tuple[BlockLayout, ...]:
    out, c_in = [], self.widths[1]
    for s in range(5):
      c_out = self.widths[2 + s]
      for j in range(self.blocks_per_stage):
        mids = tuple(base.make_divisible(round(c_in * e), 8) for e in self.expand_choices)
        ses = tuple(base.make_divisible(m // SE_REDUCTION, 8) if STAGE_SE[s] else 0 for m in mids)
        out.append(BlockLayout(stage=s, index=j, in_ch=c_in, out_ch=c_out,
                               stride=self.stage_strides[s] if j == 0 else 1,
                               act=STAGE_ACTS[s], se=STAGE_SE[s], mid_choices=mids,
                               se_choices=ses))
        c_in = c_out
    return tuple(out)

  def fields(self) -> tuple[base.Field, ...]:
    return (base.Field("resolution", (), self.resolutions),
            base.Field("depth", (5,), self.depth_choices),
            base.Field("kernel", (self.num_blocks,), self.kernel_choices),
            base.Field("expand", (self.num_blocks,), self.expand_choices))

  def num_archs(self) -> int:
    """Number of distinct networks per resolution (OFA: about 2.2e19 at 7371 per stage)."""
    per_block = len(self.kernel_choices) * len(self.expand_choices)
    per_stage = sum(per_block ** int(d) for d in self.depth_choices)
    return per_stage ** 5

  # -- arch helpers (jit/vmap friendly) -----------------------------------------------------
  def block_active(self, arch: MBV3Arch):
    """Bool ``(..., 20)``: which blocks the subnet runs (the first ``depth`` of each stage)."""
    xp, arch = base.prep(arch)
    depth = xp.asarray(self.depth_choices)[arch.depth]                 # (..., 5)
    pos = np.arange(self.num_blocks) % self.blocks_per_stage           # (20,)
    stage = np.arange(self.num_blocks) // self.blocks_per_stage
    return pos < xp.take(depth, stage, axis=-1)

  def mid_channels(self, arch: MBV3Arch):
    """Int ``(..., 20)``: middle channels of every block."""
    xp, arch = base.prep(arch)
    table = xp.asarray(np.array([b.mid_choices for b in self.blocks]))  # (20, n_expand)
    return table[np.arange(self.num_blocks), arch.expand]

  def canonicalize(self, arch: MBV3Arch) -> MBV3Arch:
    """Set the kernel/expand of blocks beyond the depth to the smallest choice."""
    xp, arch = base.prep(arch)
    act = self.block_active(arch)
    return arch._replace(kernel=xp.where(act, arch.kernel, 0).astype(arch.kernel.dtype),
                         expand=xp.where(act, arch.expand, 0).astype(arch.expand.dtype))

  def contains(self, big: MBV3Arch, small: MBV3Arch):
    """REG-NAS weight inclusion: does ``big`` hold every weight ``small`` uses?

    True iff every stage of ``big`` is at least as deep and every block ``small`` uses has in
    ``big`` a kernel and an expand ratio at least as large (first-N channels and centre kernels
    nest).  Resolution plays no part: weights do not depend on it.  Works on single archs and,
    broadcast, on populations.
    """
    xp, (big, small) = base.prep(big, small)
    used = self.block_active(small)
    return (xp.all(big.depth >= small.depth, axis=-1)
            & xp.all(~used | ((big.kernel >= small.kernel) & (big.expand >= small.expand)), axis=-1))

  def grow_to_contain(self, arch: MBV3Arch, small: MBV3Arch) -> MBV3Arch:
    """Raise ``arch`` just enough to contain ``small``: each stage at least as deep, and each
    block ``small`` uses at least its kernel and expand ratio (other blocks unchanged)."""
    xp, (arch, small) = base.prep(arch, small)
    used = self.block_active(small)
    up = lambda a, b: xp.where(used, xp.maximum(a, b), a).astype(a.dtype)
    return arch._replace(depth=xp.maximum(arch.depth, small.depth).astype(arch.depth.dtype),
                         kernel=up(arch.kernel, small.kernel), expand=up(arch.expand, small.expand))

  def mutate(self, key: jax.Array, arch: MBV3Arch, prob: float = 0.1,
             resolution_prob: float | None = None) -> MBV3Arch:
    """OFA's mutation: each block resamples (kernel, expand) together with ``prob``, each stage
    its depth with ``prob``, the resolution with ``resolution_prob`` (default ``prob``)."""
    rprob = prob if resolution_prob is None else resolution_prob
    kb, kk, ke, kd, kdv, kr, krv = jax.random.split(key, 7)
    n = self.num_blocks
    blk = jax.random.bernoulli(kb, prob, (n,))
    kernel = jnp.where(blk, jax.random.randint(kk, (n,), 0, len(self.kernel_choices)), arch.kernel)
    expand = jnp.where(blk, jax.random.randint(ke, (n,), 0, len(self.expand_choices)), arch.expand)
    depth = jnp.where(jax.random.bernoulli(kd, prob, (5,)),
                      jax.random.randint(kdv, (5,), 0, len(self.depth_choices)), arch.depth)
    res = jnp.where(jax.random.bernoulli(kr, rprob),
                    jax.random.randint(krv, (), 0, len(self.resolutions)), arch.resolution)
    return MBV3Arch(*(jnp.asarray(x, jnp.int32) for x in (res, depth, kernel, expand)))

  # -- analytic costs ------------------------------------------------------------------------
  def macs(self, arch: MBV3Arch):
    """Multiply-accumulates of one forward pass of a single image (OFA's "FLOPs").

    Exact int64 for concrete archs; float32 under ``jit``/``vmap``.
    """
    xp, arch = base.prep(arch)
    dt = base.cost_dtype(xp)
    w = self.widths
    r = xp.asarray(self.resolutions)[arch.resolution].astype(dt)
    h = base.down(r, self.stem_stride, xp)
    total = h * h * (3 * 9 * w[0])                          # stem 3x3
    total = total + h * h * (9 * w[0] + w[0] * w[1])        # first block: dw 3x3 + project
    act = self.block_active(arch)
    mids = self.mid_channels(arch).astype(dt)
    ks = xp.asarray(self.kernel_choices, dt)[arch.kernel]
    for i, b in enumerate(self.blocks):
      h_out = base.down(h, b.stride, xp)
      m, k = mids[..., i], ks[..., i]
      cost = h * h * b.in_ch * m + h_out * h_out * k * k * m + h_out * h_out * m * b.out_ch
      if b.se:
        se = xp.asarray(b.se_choices, dt)[arch.expand[..., i]]
        cost = cost + 2 * m * se
      total = total + xp.where(act[..., i], cost, 0)
      h = h_out
    return total + h * h * w[6] * w[7] + w[7] * w[8] + w[8] * self.num_classes

  def params(self, arch: MBV3Arch):
    """Parameters of the exact-shape subnet (conv/linear weights, biases, BN scale and bias)."""
    xp, arch = base.prep(arch)
    dt = base.cost_dtype(xp)
    w = self.widths
    total = 27 * w[0] + 2 * w[0] + 9 * w[0] + 2 * w[0] + w[0] * w[1] + 2 * w[1]
    act = self.block_active(arch)
    mids = self.mid_channels(arch).astype(dt)
    ks = xp.asarray(self.kernel_choices, dt)[arch.kernel]
    for i, b in enumerate(self.blocks):
      m, k = mids[..., i], ks[..., i]
      cost = b.in_ch * m + 2 * m + k * k * m + 2 * m + m * b.out_ch + 2 * b.out_ch
      if b.se:
        se = xp.asarray(b.se_choices, dt)[arch.expand[..., i]]
        cost = cost + 2 * m * se + se + m
      total = total + xp.where(act[..., i], cost, 0)
    return total + w[6] * w[7] + 2 * w[7] + w[7] * w[8] + (w[8] + 1) * self.num_classes

  # -- JSON ----------------------------------------------------------------------------------
  def arch_to_dict(self, arch: MBV3Arch) -> dict:
    """Readable form: resolution and, per stage, its depth and the choices of its used blocks."""
    a = self.validate(arch, population=False)
    stages = []
    for s in range(5):
      d = int(self.depth_choices[a.depth[s]])
      idx = [s * self.blocks_per_stage + j for j in range(d)]
      stages.append({"depth": d,
                     "kernel": [int(self.kernel_choices[a.kernel[i]]) for i in idx],
                     "expand": [base.readable(self.expand_choices[a.expand[i]]) for i in idx]})
    return {"space": self.name, "resolution": int(self.resolutions[a.resolution]),
            "stages": stages}

  def arch_from_dict(self, obj: Mapping) -> MBV3Arch:
    """Parse :meth:`arch_to_dict` output; blocks beyond a stage's depth take the smallest
    choice."""
    if not isinstance(obj, Mapping):
      raise InvalidArchError(f"arch: expected a JSON object, got {type(obj).__name__}")
    base.json_keys(obj, ("space", "resolution", "stages"), "")
    if obj.get("space", self.name) != self.name:
      raise InvalidArchError(f"space: {obj['space']!r} does not match this space {self.name!r}")
    res = base.json_choice(base.json_get(obj, "resolution", ""), self.resolutions, "resolution")
    stages = base.json_list(base.json_get(obj, "stages", ""), 5, "stages")
    n = self.blocks_per_stage
    depth, kernel, expand = np.zeros(5, np.int32), np.zeros(5 * n, np.int32), np.zeros(5 * n, np.int32)
    for s, st in enumerate(stages):
      where = f"stages[{s}]"
      base.json_keys(st if isinstance(st, Mapping) else {}, ("depth", "kernel", "expand"), where)
      depth[s] = base.json_choice(base.json_get(st, "depth", where), self.depth_choices,
                                  f"{where}.depth")
      d = int(self.depth_choices[depth[s]])
      for key, choices, out in (("kernel", self.kernel_choices, kernel),
                                ("expand", self.expand_choices, expand)):
        vals = base.json_list(base.json_get(st, key, where), d, f"{where}.{key}")
        for j, v in enumerate(vals):
          out[s * n + j] = base.json_choice(v, choices, f"{where}.{key}[{j}]")
    return MBV3Arch(np.int32(res), depth, kernel, expand)

  def format(self, arch: MBV3Arch) -> str:
    """One-line summary, e.g. ``r160: k3e4 k5e6 / k7e3 k3e3 k5e4 / ...`` (stages split by /)."""
    j = self.arch_to_dict(arch)
    parts = [" ".join(f"k{k}e{base.readable(e)}" for k, e in zip(st["kernel"], st["expand"]))
             for st in j["stages"]]
    return f"r{j['resolution']}: " + " / ".join(parts)
