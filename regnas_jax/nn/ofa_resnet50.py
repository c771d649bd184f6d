"""OFA-ResNet50: the masked supernet, the exact-shape subnet, extraction and channel sorting.

``OFAResNet50(space)`` holds the largest network.  ``apply(variables, images, arch, train)``
turns the arch's choice indices into masks inside the traced function:

* width        -> first-N masks over the stem's middle and output channels and over every
  stage's output channels (the residual stream), applied after BN, so a masked channel is 0
  everywhere downstream and every reader sees exactly the sliced input;
* expand ratio -> a first-N mask over a block's middle channels (its width times the ratio);
* depth        -> an "active" flag per block (blocks past ``base + d`` of a stage pass their
  input through and leave their BN statistics alone), and one for the stem's middle layer.

Parameter names are shared with the exact-shape :class:`ResNet`, and
:meth:`OFAResNet50.extract` slices a supernet's variables to one subnet's exact shapes.  The
classifier head (pool, dropout, linear) is ``blocks.Head`` without its 1x1 conv.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnas_jax.nn import layers, ops
from regnas_jax.nn.blocks import Head
from regnas_jax.nn.common import bn_slice, segment_order
from regnas_jax.nn.supernet import Supernet
from regnas_jax.spaces.ofa_resnet50 import OFAResNet50Space, ResNetArch


# ----------------------------------------------------------------------------------------------
# The masked supernet
# ----------------------------------------------------------------------------------------------
def _residual_scale_init(zero: bool):
  """Init of the BN scale that ends a residual branch: 0 makes every block start as its
  shortcut (Goyal et al., 2017), which keeps a deep residual stack trainable at a high rate."""
  return nn.initializers.zeros if zero else nn.initializers.ones


class ElasticBottleneck(nn.Module):
  """One elastic bottleneck block at its largest shape (see module docstring)."""
  layout: Any            # spaces.ofa_resnet50.BottleneckLayout
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = None
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, x, mid_mask, out_mask, active, train: bool):
    b = self.layout
    c_out = max(b.out_choices)

    def conv_bn(h, feats, kernel, stride, mask, name):
      h = layers.conv(feats, kernel, stride, name=name, dtype=self.dtype)(h)
      init = _residual_scale_init(self.zero_init_residual and name == "conv3")
      return layers.MaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype, init,
                                    features=feats,
                                    name=name.replace("conv", "bn") if name != "down"
                                    else "down_bn")(h, train, mask, active)

    h = jax.nn.relu(conv_bn(x, b.max_mid, 1, 1, mid_mask, "conv1"))
    h = jax.nn.relu(conv_bn(h, b.max_mid, 3, b.stride, mid_mask, "conv2"))
    h = conv_bn(h, c_out, 1, 1, out_mask, "conv3")
    if b.downsample:
      r = conv_bn(ops.avg_pool_ceil(x, b.stride), c_out, 1, 1, out_mask, "down")
      return jax.nn.relu(h + r)
    return jnp.where(active, jax.nn.relu(h + x), x)


class OFAResNet50(Supernet):
  """The OFA-ResNet50 supernet: one parameter tree, subnets chosen by ``arch`` data.

  Call as ``logits = model.apply(variables, images, arch, train=False)``, or in train mode with
  ``mutable=['batch_stats']``.  ``images``: ``(N, R, R, 3)``; ``arch``: a :class:`ResNetArch`
  of int arrays whose ``resolution`` names the images' side (checked when concrete).  Returns
  ``(N, num_classes)`` logits.  ``jax.vmap`` over ``arch`` (and, for per-subnet statistics, over
  ``variables['batch_stats']``) scores a population with shared parameters.

  Attributes:
    space: the search space (widths, strides, choices).
    bn_momentum, bn_epsilon: BatchNorm settings (Flax momentum convention).
    dropout_rate: dropout before the classifier in train mode (needs a ``'dropout'`` rng).
    dtype: compute dtype (parameters and BN statistics stay float32).
    zero_init_residual: initialise the scale of each block's last BN to 0 (every block starts
      as its shortcut); without it an 18-block supernet's logits explode at the start.
  """
  space: OFAResNet50Space
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  zero_init_residual: bool = True

  # XLA:CPU runs 3x3 convolutions slowly inside a scan's loop body, so the subnets of a
  # training step are vmapped on CPU too (about 4x faster; benchmarks/train_throughput.py).
  cpu_subnet_loop = "vmap"
  can_reorder = True

  @nn.compact
  def forward(self, images, arch: ResNetArch, train: bool = False):
    sp = self.space
    bn = lambda name, h, mask, active=True: layers.MaskedBatchNorm(
        self.bn_momentum, self.bn_epsilon, self.dtype, name=name)(h, train, mask, active)
    conv = lambda feats, stride, name: layers.conv(feats, 3, stride, name=name, dtype=self.dtype)
    mids, outs = sp.stem_choices
    c0, c1 = sp.stem_channels(arch)
    m0, m1 = jnp.arange(max(mids)) < c0, jnp.arange(max(outs)) < c1
    stem_on = arch.stem_depth > 0

    x = images.astype(self.dtype)
    x = jax.nn.relu(bn("stem_bn1", conv(max(mids), sp.stem_stride, "stem_conv1")(x), m0))
    h = jax.nn.relu(bn("stem_bn2", conv(max(mids), 1, "stem_conv2")(x), m0, stem_on))
    x = jnp.where(stem_on, x + h, x)
    x = jax.nn.relu(bn("stem_bn3", conv(max(outs), 1, "stem_conv3")(x), m1))
    if sp.max_pool:
      x = ops.max_pool_3x3_s2(x)

    active = sp.block_active(arch)
    mid_ch = sp.mid_channels(arch)
    out_ch = sp.stage_channels(arch)
    for i, b in enumerate(sp.blocks):
      mid_mask = jnp.arange(b.max_mid) < mid_ch[i]
      out_mask = jnp.arange(max(b.out_choices)) < out_ch[b.stage]
      x = ElasticBottleneck(b, self.bn_momentum, self.bn_epsilon, self.dtype,
                            self.zero_init_residual, name=b.name)(
          x, mid_mask, out_mask, active[i], train)
    return _head(self, sp.num_classes)(x, train)

  def subnet_specs(self, arch: ResNetArch) -> tuple[BottleneckSpec, ...]:
    """Exact block shapes of the subnet ``arch`` (concrete) selects."""
    space = self.space
    a = space.validate(arch, population=False)
    active, mids = space.block_active(a), space.mid_channels(a)
    outs = space.stage_channels(a)
    c_in = int(space.stem_channels(a)[1])
    specs = []
    for i, b in enumerate(space.blocks):
      if active[i]:
        c_out = int(outs[b.stage])
        specs.append(BottleneckSpec(b.name, c_in, int(mids[i]), c_out, b.stride, b.downsample))
        c_in = c_out
    return tuple(specs)

  def exact_module(self, arch: ResNetArch) -> ResNet:
    """The standalone exact-shape module of one subnet (no variables; see :meth:`extract`)."""
    sp = self.space
    a = sp.validate(arch, population=False)
    c0, c1 = sp.stem_channels(a)
    return ResNet(stem_mid=int(c0), stem_out=int(c1), stem_middle_layer=bool(a.stem_depth),
                  stem_stride=sp.stem_stride, max_pool=sp.max_pool, blocks=self.subnet_specs(a),
                  num_classes=sp.num_classes, bn_momentum=self.bn_momentum,
                  bn_epsilon=self.bn_epsilon, dropout_rate=self.dropout_rate, dtype=self.dtype,
                  zero_init_residual=self.zero_init_residual)

  def extract(self, variables, arch: ResNetArch):
    """Slice a supernet's variables to the exact shapes of one subnet.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` of the supernet (the statistics may be
        the ones re-calibrated for this subnet).
      arch: one (concrete) architecture.
    Returns:
      ``(module, variables)``: a :class:`ResNet` and its variables, first-N channels of every
      layer, no masks and no unused blocks.
    """
    module = self.exact_module(arch)
    params, stats = variables["params"], variables.get("batch_stats", {})
    c0, c1 = module.stem_mid, module.stem_out
    p = {"stem_conv1": _conv_slice(params["stem_conv1"], 3, c0),
         "stem_bn1": bn_slice(params["stem_bn1"], c0),
         "stem_conv3": _conv_slice(params["stem_conv3"], c0, c1),
         "stem_bn3": bn_slice(params["stem_bn3"], c1)}
    st = {k: bn_slice(stats[k], c) for k, c in (("stem_bn1", c0), ("stem_bn3", c1))
          if k in stats}
    if module.stem_middle_layer:
      p["stem_conv2"] = _conv_slice(params["stem_conv2"], c0, c0)
      p["stem_bn2"] = bn_slice(params["stem_bn2"], c0)
      if "stem_bn2" in stats:
        st["stem_bn2"] = bn_slice(stats["stem_bn2"], c0)
    for s in module.blocks:
      q, qs = params[s.name], stats.get(s.name, {})
      shapes = {"conv1": (s.in_ch, s.mid_ch), "conv2": (s.mid_ch, s.mid_ch),
                "conv3": (s.mid_ch, s.out_ch)}
      if s.downsample:
        shapes["down"] = (s.in_ch, s.out_ch)
      p[s.name] = {}
      for conv_name, (ci, co) in shapes.items():
        bn_name = "down_bn" if conv_name == "down" else conv_name.replace("conv", "bn")
        p[s.name][conv_name] = _conv_slice(q[conv_name], ci, co)
        p[s.name][bn_name] = bn_slice(q[bn_name], co)
        if bn_name in qs:
          st.setdefault(s.name, {})[bn_name] = bn_slice(qs[bn_name], co)
    c_last = module.blocks[-1].out_ch
    p["classifier"] = {"kernel": params["classifier"]["kernel"][:c_last],
                       "bias": params["classifier"]["bias"]}
    out = {"params": p}
    if st:
      out["batch_stats"] = st
    return module, out

  def reorder_channels(self, variables, keep_expands: Sequence = (),
                       keep_widths: Sequence = ()):
    """Sort every elastic channel dimension by importance, as a function-preserving permutation.

    * Middle channels of each bottleneck (OFA's ``re_organize_middle_weights``): the outputs of
      ``conv2`` by the L1 norm of the ``conv3`` weights reading them, then the outputs of
      ``conv1`` by the L1 norm of the (already permuted) ``conv2`` weights reading them.
    * Outer channels (the elastic widths; OFA's public code leaves them unsorted): the stem's
      middle channels, the stem's output channels and each stage's residual stream, each by the
      L1 norm of all weights that read it (the next convs, every block's ``conv1`` and shortcut
      in the stage after, the classifier for the last stage); the permutation is applied to
      every layer that writes or reads the stream.

    Each permutation stays inside the segments delimited by the channel counts of the widths in
    ``keep_widths`` and the expand ratios in ``keep_expands`` (choices already trained), so
    those subnets keep their function; the largest network's function is always unchanged.
    Pure; works under ``jit``.
    """
    sp = self.space
    for name, vals, choices in (("keep_expands", keep_expands, sp.expand_choices),
                                ("keep_widths", keep_widths, sp.width_choices)):
      bad = [v for v in vals if v not in choices]
      if bad:
        raise ValueError(f"{name}: {bad[0]!r} is not one of {choices}")
    # Kept choices: the listed ones and the largest (always trained first).
    wi = {sp.width_choices.index(w) for w in keep_widths} | {len(sp.width_choices) - 1}
    ei = {sp.expand_choices.index(e) for e in keep_expands} | {len(sp.expand_choices) - 1}
    tree = _Tree(jax.tree.map(lambda x: x, dict(variables["params"])),  # new containers,
                 jax.tree.map(lambda x: x, dict(variables.get("batch_stats", {}))))  # same arrays
    _reorder_middles(sp, tree, wi, ei)
    _reorder_streams(sp, tree, wi)
    out = dict(variables, params=tree.p)
    if tree.st:
      out["batch_stats"] = tree.st
    return out


def _head(module, num_classes) -> Head:
  """Global average pool, optional dropout, linear classifier (no head conv)."""
  return Head(num_classes, dropout_rate=module.dropout_rate, dtype=module.dtype)


# ----------------------------------------------------------------------------------------------
# The exact-shape subnet
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BottleneckSpec:
  """Exact shape of one bottleneck block of an extracted subnet."""
  name: str
  in_ch: int
  mid_ch: int
  out_ch: int
  stride: int
  downsample: bool  # ResNet-D shortcut (avg pool + 1x1 conv + BN); else identity


class Bottleneck(nn.Module):
  """Plain bottleneck: 1x1 conv, 3x3 conv (stride), 1x1 conv, BN after each, ReLU after the
  sum with the (identity or ResNet-D) shortcut."""
  spec: BottleneckSpec
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = None
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    s = self.spec
    bn = lambda name, h: layers.batch_norm(
        train, self.bn_momentum, self.bn_epsilon, self.dtype, name,
        _residual_scale_init(self.zero_init_residual and name == "bn3"))(h)
    h = jax.nn.relu(bn("bn1", layers.conv(s.mid_ch, 1, name="conv1", dtype=self.dtype)(x)))
    h = jax.nn.relu(bn("bn2", layers.conv(s.mid_ch, 3, s.stride, name="conv2",
                                          dtype=self.dtype)(h)))
    h = bn("bn3", layers.conv(s.out_ch, 1, name="conv3", dtype=self.dtype)(h))
    if s.downsample:
      x = bn("down_bn", layers.conv(s.out_ch, 1, name="down", dtype=self.dtype)(
          ops.avg_pool_ceil(x, s.stride)))
    return jax.nn.relu(h + x)


class ResNet(nn.Module):
  """A standalone ResNet-D style network with exact shapes (what :meth:`OFAResNet50.extract`
  returns).

  ``model.apply(variables, images, train=False)``; train mode needs ``mutable=['batch_stats']``.
  Plain ``flax.linen`` convolutions, BatchNorm and Dense only.
  """
  stem_mid: int
  stem_out: int
  stem_middle_layer: bool
  stem_stride: int
  max_pool: bool
  blocks: tuple[BottleneckSpec, ...]
  num_classes: int
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  zero_init_residual: bool = True

  @nn.compact
  def __call__(self, images, train: bool = False):
    bn = lambda name, h: layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype,
                                           name)(h)
    conv = lambda feats, stride, name: layers.conv(feats, 3, stride, name=name, dtype=self.dtype)
    x = images.astype(self.dtype)
    x = jax.nn.relu(bn("stem_bn1", conv(self.stem_mid, self.stem_stride, "stem_conv1")(x)))
    if self.stem_middle_layer:
      x = x + jax.nn.relu(bn("stem_bn2", conv(self.stem_mid, 1, "stem_conv2")(x)))
    x = jax.nn.relu(bn("stem_bn3", conv(self.stem_out, 1, "stem_conv3")(x)))
    if self.max_pool:
      x = ops.max_pool_3x3_s2(x)
    for s in self.blocks:
      x = Bottleneck(s, self.bn_momentum, self.bn_epsilon, self.dtype, self.zero_init_residual,
                     name=s.name)(x, train)
    return _head(self, self.num_classes)(x, train)


# ----------------------------------------------------------------------------------------------
# Extraction and channel re-ordering
# ----------------------------------------------------------------------------------------------
def _conv_slice(p, c_in, c_out):
  return {"kernel": p["kernel"][..., :c_in, :c_out]}


def _permute(tree, perm, axis):
  return jax.tree.map(lambda v: jnp.take(v, perm, axis=axis), tree)


class _Tree(NamedTuple):
  """The params ``p`` and statistics ``st`` being re-ordered (containers edited in place); a
  layer's path is ``(block name or None, layer name)``."""
  p: dict
  st: dict

  def kernel(self, path):
    blk, name = path
    return (self.p if blk is None else self.p[blk])[name]["kernel"]

  def permute_conv(self, path, perm, axis):  # axis -1: outputs, -2: inputs
    blk, name = path
    h = self.p if blk is None else self.p[blk]
    h[name] = {"kernel": jnp.take(h[name]["kernel"], perm, axis=axis)}

  def permute_bn(self, path, perm):
    """Permute a BN's params and statistics."""
    blk, name = path
    for tree in (self.p, self.st):
      holder = tree if blk is None else tree.get(blk)
      if holder is not None and name in holder:
        holder[name] = _permute(holder[name], perm, -1)


def _reorder_middles(sp, tree: _Tree, wi, ei) -> None:
  """Middle channels of every block, inside the segments of the kept (width, expand) pairs."""
  for b in sp.blocks:
    mids = sorted({int(b.mid_table[w][e]) for w in wi for e in ei} - {b.max_mid})
    q = tree.p[b.name]
    perm = segment_order(jnp.abs(q["conv3"]["kernel"]).sum((0, 1, 3)), mids)
    tree.permute_conv((b.name, "conv2"), perm, -1)
    tree.permute_bn((b.name, "bn2"), perm)
    tree.permute_conv((b.name, "conv3"), perm, -2)
    perm = segment_order(jnp.abs(q["conv2"]["kernel"]).sum((0, 1, 3)), mids)
    tree.permute_conv((b.name, "conv1"), perm, -1)
    tree.permute_bn((b.name, "bn1"), perm)
    tree.permute_conv((b.name, "conv2"), perm, -2)


def _streams(sp) -> list:
  """``(writers, BNs, readers, width choices)`` of each elastic stream: the stem's middle and
  output channels, then the residual stream of each stage."""
  def readers_of_stage(s):
    if s == 3:
      return []
    first = next(b for b in sp.blocks if b.stage == s + 1)
    return [(first.name, "conv1"), (first.name, "down")]

  # stem_conv2 both reads and writes the stem's middle stream.
  streams = [([(None, "stem_conv1"), (None, "stem_conv2")],
              [(None, "stem_bn1"), (None, "stem_bn2")],
              [(None, "stem_conv2"), (None, "stem_conv3")], sp.stem_choices[0])]
  first = sp.blocks[0].name
  streams.append(([(None, "stem_conv3")], [(None, "stem_bn3")],
                  [(first, "conv1"), (first, "down")], sp.stem_choices[1]))
  for s in range(4):
    blocks = [b for b in sp.blocks if b.stage == s]
    writers = [(b.name, "conv3") for b in blocks] + [(blocks[0].name, "down")]
    bns = [(b.name, "bn3") for b in blocks] + [(blocks[0].name, "down_bn")]
    readers = [(b.name, "conv1") for b in blocks[1:]] + readers_of_stage(s)
    streams.append((writers, bns, readers, sp.stage_choices[s]))
  return streams


def _reorder_streams(sp, tree: _Tree, wi) -> None:
  """The outer channels: each stream sorted by the weights that read it, inside the segments of
  the kept widths, and permuted in every writer, BN and reader."""
  bounds = lambda choices: sorted({int(choices[i]) for i in wi} - {int(max(choices))})
  for s_idx, (writers, bns, readers, choices) in enumerate(_streams(sp)):
    imp = sum(jnp.abs(tree.kernel(r)).sum((0, 1, 3)) for r in readers)
    if s_idx == 5:  # the last stage: the classifier reads it
      imp = imp + jnp.abs(tree.p["classifier"]["kernel"]).sum(1)
    perm = segment_order(imp, bounds(choices))
    for w in writers:
      tree.permute_conv(w, perm, -1)
    for bn_path in bns:
      tree.permute_bn(bn_path, perm)
    for r in readers:
      tree.permute_conv(r, perm, -2)
    if s_idx == 5:
      tree.p["classifier"] = {"kernel": tree.p["classifier"]["kernel"][perm],
                              "bias": tree.p["classifier"]["bias"]}


__all__ = ["Bottleneck", "BottleneckSpec", "ElasticBottleneck", "OFAResNet50", "ResNet"]
