"""OFA-MobileNetV3: the masked supernet, the exact-shape subnet, extraction and channel sorting.

``OFAMobileNetV3(space)`` holds the largest network.  ``apply(variables, images, arch, train)``
turns the arch's choice indices into masks inside the traced function:

* expand ratio -> a first-N mask over the middle channels of a block (applied after BN), and
  the matching first-N mask over its SE hidden units;
* kernel size  -> an index into the block's derived kernels (centre crop + transform matrix,
  zero-padded to the largest size);
* depth        -> an "active" flag per block; inactive blocks are residual blocks whose branch
  is dropped (``where(active, x + f(x), x)``) and whose BN statistics are left untouched.

The block's branch (``blocks.ElasticIBN``: elastic kernel, h-sigmoid SE on the SE stages), its
exact twin (``blocks.IBN``) and the head (``blocks.Head``) are shared with the TuNAS and SCARLET
supernets; this module adds OFA's shortcut, stem and first block.  Parameter names are shared
with the exact-shape :class:`MobileNetV3`, and :meth:`OFAMobileNetV3.extract` slices a supernet's
variables to one subnet's exact shapes.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnas_jax.nn import layers, ops
from regnas_jax.nn.blocks import (IBN, ElasticIBN, Head, IBNSpec, exact_ibn_variables,
                                  variant_branches)
from regnas_jax.nn.common import segment_order
from regnas_jax.nn.supernet import Supernet
from regnas_jax.spaces.ofa_mbv3 import MBV3Arch, OFAMobileNetV3Space


# ----------------------------------------------------------------------------------------------
# The masked supernet
# ----------------------------------------------------------------------------------------------
class ElasticMBConv(nn.Module):
  """One elastic MBConv block: the shared branch plus OFA's shortcut (an inactive block returns
  its input; see module docstring).

  ``variants`` (switch mode): one exact-size branch per expand choice (``choice`` its index),
  each switching over the kernel sizes inside its depthwise layer; only the chosen branch runs,
  and an inactive residual block takes an extra identity branch."""
  branch: ElasticIBN
  residual: bool
  variants: tuple = ()

  @nn.compact
  def __call__(self, x, kernel_index, mid_mask, se_mask, active, train: bool, choice=None):
    if not self.variants:
      h = self.branch(x, kernel_index, mid_mask, train, update=active, se_mask=se_mask)
      return jnp.where(active, x + h, x) if self.residual else h
    fns = variant_branches(self.variants, train, self.residual)
    if self.residual:
      fns.append(lambda mdl, x, kernel_index: x)
      choice = jnp.where(active, choice, len(self.variants))
    return nn.switch(choice, fns, self, x, kernel_index)


class OFAMobileNetV3(Supernet):
  """The OFA-MobileNetV3 supernet: one parameter tree, subnets chosen by ``arch`` data.

  Call as ``logits = model.apply(variables, images, arch, train=False)``, or in train mode with
  ``mutable=['batch_stats']`` (BN then uses batch statistics and updates the running ones of
  the active channels).  ``images``: ``(N, R, R, 3)``; ``arch``: an :class:`MBV3Arch` of int
  arrays whose ``resolution`` names the images' side (checked when concrete).  Returns
  ``(N, num_classes)`` logits.  ``jax.vmap`` over ``arch`` (and, for per-subnet statistics, over
  ``variables['batch_stats']``) scores a population with shared parameters.

  Attributes:
    space: the search space (widths, strides, choices).
    depthwise_impl: ``'auto'`` | ``'xla'`` | ``'shift'`` (see :func:`ops.depthwise_conv`).
    kernel_transform: OFA's learned kernel transform matrices (``False``: plain centre crops,
      which makes a smaller kernel literally the centre of a larger one).
    bn_momentum, bn_epsilon: BatchNorm settings (Flax momentum convention).
    dropout_rate: dropout before the classifier in train mode (needs a ``'dropout'`` rng).
    dtype: compute dtype (parameters and BN statistics stay float32).
    switch: switch mode (``regnas_jax.nn.supernet``): every block branches on its expand and
      kernel choice (``lax.switch``) instead of masking them -- for members run one at a time.
  """
  space: OFAMobileNetV3Space
  depthwise_impl: str = "auto"
  kernel_transform: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  switch: bool = False

  can_reorder = True
  switches = True

  @nn.compact
  def forward(self, images, arch: MBV3Arch, train: bool = False):
    sp = self.space
    w = sp.widths
    bn = lambda name: layers.MaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype,
                                             name=name)
    x = images.astype(self.dtype)
    x = layers.conv(w[0], 3, sp.stem_stride, name="stem_conv", dtype=self.dtype)(x)
    x = ops.hswish(bn("stem_bn")(x, train))
    # First block: fixed MBConv, expand 1, kernel 3, ReLU.
    h = layers.DepthwiseConv2D(3, 1, self.depthwise_impl, self.dtype, name="first_dw")(x)
    h = jax.nn.relu(bn("first_dw_bn")(h, train))
    h = bn("first_proj_bn")(layers.conv(w[1], 1, name="first_proj", dtype=self.dtype)(h), train)
    x = x + h if w[0] == w[1] else h

    active = sp.block_active(arch)
    mids = sp.mid_channels(arch)
    for i, b in enumerate(sp.blocks):
      mid_mask = jnp.arange(max(b.mid_choices)) < mids[i]
      se_mask = None
      if b.se:
        se_mask = jnp.arange(max(b.se_choices)) < jnp.asarray(b.se_choices)[arch.expand[i]]
      branch = functools.partial(
          ElasticIBN, mid_ch=max(b.mid_choices), out_ch=b.out_ch, stride=b.stride, act=b.act,
          kernel_sizes=sp.kernel_choices, depthwise="elastic",
          kernel_transform=self.kernel_transform, se_ch=max(b.se_choices) if b.se else 0,
          se_gate="hsigmoid", depthwise_impl=self.depthwise_impl, bn_momentum=self.bn_momentum,
          bn_epsilon=self.bn_epsilon, dtype=self.dtype)
      variants, choice = (), None
      if self.switch:
        n_e = len(sp.expand_choices)
        variants = tuple(
            branch(mid_size=b.mid_choices[e], se_size=b.se_choices[e] if b.se else None,
                   kernel_switch=True)
            for e in range(n_e))
        choice = arch.expand[i]
      x = ElasticMBConv(branch(), b.residual, variants, name=b.name)(
          x, arch.kernel[i], mid_mask, se_mask, active[i], train, choice)
    return _head(self, w[7], w[8], sp.num_classes, masked=True)(x, train)

  def subnet_specs(self, arch: MBV3Arch) -> tuple[IBNSpec, ...]:
    """Exact block shapes of the subnet ``arch`` (concrete) selects."""
    space = self.space
    a = space.validate(arch, population=False)
    active = space.block_active(a)
    mids = space.mid_channels(a)
    out = []
    for i, b in enumerate(space.blocks):
      if active[i]:
        out.append(IBNSpec(b.name, in_ch=b.in_ch, out_ch=b.out_ch, mid_ch=int(mids[i]),
                           kernel=int(space.kernel_choices[a.kernel[i]]), stride=b.stride,
                           act=b.act, se_ch=int(b.se_choices[a.expand[i]]) if b.se else 0,
                           se_gate="hsigmoid",
                           shortcut="identity" if b.residual else "none"))
    return tuple(out)

  def exact_module(self, arch: MBV3Arch) -> "MobileNetV3":
    """The standalone exact-shape module of one subnet (no variables; see :meth:`extract`)."""
    sp = self.space
    w = sp.widths
    return MobileNetV3(stem_ch=w[0], stem_stride=sp.stem_stride, first_ch=w[1],
                       blocks=self.subnet_specs(arch), head_ch=w[7], feature_ch=w[8],
                       num_classes=sp.num_classes, depthwise_impl=self.depthwise_impl,
                       bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                       dropout_rate=self.dropout_rate, dtype=self.dtype)

  def extract(self, variables, arch: MBV3Arch):
    """Slice a supernet's variables to the exact shapes of one subnet.

    Args:
      variables: ``{'params': ..., 'batch_stats': ...}`` of the supernet; the batch statistics
        may be the ones re-calibrated for this subnet.
      arch: one (concrete) architecture.
    Returns:
      ``(module, variables)``: a :class:`MobileNetV3` and its variables, with no masks and no
      unused blocks; depthwise kernels are the derived (cropped and transformed) ``k x k`` ones.
    """
    sp = self.space
    a = sp.validate(arch, population=False)
    specs = self.subnet_specs(a)
    params, stats = variables["params"], variables.get("batch_stats", {})
    fixed = ("stem_conv", "stem_bn", "first_dw", "first_dw_bn", "first_proj", "first_proj_bn",
             "head_conv", "head_bn", "feature_mix", "classifier")
    new_p = {k: params[k] for k in fixed}
    new_s = {k: stats[k] for k in fixed if k in stats}
    for s in specs:
      new_p[s.name], st = exact_ibn_variables(params[s.name], stats.get(s.name), s,
                                              sp.kernel_choices, self.kernel_transform)
      if st:
        new_s[s.name] = st
    module = self.exact_module(a)
    out = {"params": new_p}
    if new_s:
      out["batch_stats"] = new_s
    return module, out

  def reorder_channels(self, variables, keep_expands: Sequence = ()):
    """OFA's channel sorting before shrinking the width, as a function-preserving permutation.

    For every elastic block the middle channels are sorted by the L1 norm of the projection
    weights that read them (most important first) and the permutation is applied to everything
    that touches them: expand conv outputs, both BNs (params and statistics), the depthwise
    kernel, SE reduce inputs / expand outputs.  SE hidden units are then sorted by the L1 norm of
    the SE expand weights.  ``keep_expands`` lists expand ratios already trained as subnets: the
    permutation stays inside the segments their widths delimit, so those subnets keep their
    function too (OFA's ``expand_ratio_stage`` offsets; here also applied to the SE hidden units).
    The largest network's function is always unchanged.  Pure; works under ``jit``.
    """
    sp = self.space
    bad = [e for e in keep_expands if e not in sp.expand_choices]
    if bad:
      raise ValueError(f"keep_expands: {bad[0]!r} is not one of {sp.expand_choices}")
    params = dict(variables["params"])
    stats = dict(variables.get("batch_stats", {}))
    keep_idx = [sp.expand_choices.index(e) for e in keep_expands]
    for b in sp.blocks:
      p = jax.tree.map(lambda x: x, params[b.name])
      mid = max(b.mid_choices)
      bounds = sorted({b.mid_choices[i] for i in keep_idx} - {mid})
      perm = segment_order(jnp.abs(p["proj"]["kernel"]).sum((0, 1, 3)), bounds)
      p["expand"] = {"kernel": p["expand"]["kernel"][..., perm]}
      p["expand_bn"] = jax.tree.map(lambda v: v[..., perm], p["expand_bn"])
      p["dw"] = dict(p["dw"], kernel=p["dw"]["kernel"][..., perm])
      p["dw_bn"] = jax.tree.map(lambda v: v[..., perm], p["dw_bn"])
      p["proj"] = {"kernel": p["proj"]["kernel"][:, :, perm, :]}
      if b.se:
        red, exp = p["se"]["reduce"], p["se"]["expand"]
        red = {"kernel": red["kernel"][perm, :], "bias": red["bias"]}
        exp = {"kernel": exp["kernel"][:, perm], "bias": exp["bias"][perm]}
        se_bounds = sorted({b.se_choices[i] for i in keep_idx} - {max(b.se_choices)})
        hperm = segment_order(jnp.abs(exp["kernel"]).sum(1), se_bounds)
        red = {"kernel": red["kernel"][:, hperm], "bias": red["bias"][hperm]}
        exp = {"kernel": exp["kernel"][hperm, :], "bias": exp["bias"]}
        p["se"] = {"reduce": red, "expand": exp}
      params[b.name] = p
      if b.name in stats:
        st = dict(stats[b.name])
        st["expand_bn"] = jax.tree.map(lambda v: v[..., perm], st["expand_bn"])
        st["dw_bn"] = jax.tree.map(lambda v: v[..., perm], st["dw_bn"])
        stats[b.name] = st
    out = dict(variables, params=params)
    if stats:
      out["batch_stats"] = stats
    return out


def _head(module, head_ch, feature_ch, num_classes, masked) -> Head:
  """Final expand conv + BN + h-swish, average pool, feature mix (no bias) + h-swish,
  classifier; settings from the (super- or exact) network ``module``."""
  return Head(num_classes, conv_ch=head_ch, act="h_swish", mix_ch=feature_ch,
              mix_name="feature_mix", mix_bias=False, mix_act="h_swish",
              dropout_rate=module.dropout_rate, masked=masked, bn_momentum=module.bn_momentum,
              bn_epsilon=module.bn_epsilon, dtype=module.dtype)


# ----------------------------------------------------------------------------------------------
# The exact-shape subnet
# ----------------------------------------------------------------------------------------------
class MobileNetV3(nn.Module):
  """A standalone MobileNetV3 with exact shapes (what :meth:`OFAMobileNetV3.extract` returns).

  ``model.apply(variables, images, train=False)``; train mode needs ``mutable=['batch_stats']``.
  Uses only ``flax.linen`` layers (``nn.Conv``, ``nn.BatchNorm``, ``nn.Dense``) plus a
  depthwise conv, so it can be trained, fine-tuned or exported on its own.
  """
  stem_ch: int
  stem_stride: int
  first_ch: int
  blocks: tuple[IBNSpec, ...]
  head_ch: int
  feature_ch: int
  num_classes: int
  depthwise_impl: str = "auto"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    bn = lambda name: (lambda x, tr: layers.batch_norm(tr, self.bn_momentum, self.bn_epsilon,
                                                self.dtype, name)(x))
    x = images.astype(self.dtype)
    x = layers.conv(self.stem_ch, 3, self.stem_stride, name="stem_conv", dtype=self.dtype)(x)
    x = ops.hswish(bn("stem_bn")(x, train))
    h = layers.DepthwiseConv2D(3, 1, self.depthwise_impl, self.dtype, name="first_dw")(x)
    h = jax.nn.relu(bn("first_dw_bn")(h, train))
    h = bn("first_proj_bn")(layers.conv(self.first_ch, 1, name="first_proj", dtype=self.dtype)(h),
                            train)
    x = x + h if self.stem_ch == self.first_ch else h
    for s in self.blocks:
      x = IBN(s, self.depthwise_impl, self.bn_momentum, self.bn_epsilon, self.dtype,
              name=s.name)(x, train)
    return _head(self, self.head_ch, self.feature_ch, self.num_classes, masked=False)(x, train)
