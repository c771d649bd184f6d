"""SCARLET S1/S2: the masked supernet with skips and ELS, the exact subnet, extraction + folding.

One shared block per layer holds the largest bottleneck (expand ``round(c_in * 6)``, 7x7
depthwise, SE on the expanded channels); a subnet is selected by data, as in the OFA supernets:

* expand ratio -> first-N mask over the expanded channels (after BN) and over the SE hidden units;
* kernel size  -> index into the centre-cropped (optionally OFA-transformed) kernels;
* SE on/off    -> a weight ``w`` in {0, 1}: ``(1 - w) * h + w * se(h)``;
* skip         -> ``where(skip, skip_path(x), block(x))``; the block's BN statistics are not
  updated when the layer is skipped.

The bottleneck is ``blocks.ElasticIBN`` (h-swish, elastic kernel), exported as ``blocks.IBN``,
with ``blocks.Head``: the same block and head as the OFA and TuNAS supernets.

The skip path is a subsample by the layer's stride followed by either the **ELS** (equivariant
learnable stabilizer: a bias-free 1x1 conv ``c_in -> c_out``, no BN, no activation, initialised
to the zero-padded identity so that it starts as a plain skip) or a plain zero-pad of the
channels (``space.els=False``).

*Design note.*  SCARLET's supernet has a separate block per choice (7 or 13 parallel blocks per
layer, trained FairNAS-style).  Here the choices of a layer share one block by nesting, as in OFA
and TuNAS's operation collapsing: a layer costs one block in the compiled program and under
``vmap`` (instead of 7-13), which keeps the CPU default and population scoring cheap.  The ELS
and its folding do not depend on this choice.

**Folding on export** (the seed's proof, Eq. 1-4): a run of skips applies ``x -> x P`` with
``P = M_1 M_2 ...`` (each ``M`` an ELS kernel or a zero-pad identity) after subsampling.  The
exported subnet has plain skips (subsample only, channel count unchanged) and the next layer's
first convolution gets the kernel ``P W`` -- the next bottleneck's expand conv, or the head conv.
Where that bottleneck is residual, its shortcut also needs ``x P``: it becomes a 1x1 conv with
kernel ``P`` (or a zero-pad / identity without ELS).  The exported logits equal the supernet's.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnas_jax.nn import layers
from regnas_jax.nn.blocks import (IBN, ElasticIBN, Head, IBNSpec, exact_ibn_variables,
                                  pad_channels, variant_branches)
from regnas_jax.nn.supernet import Supernet
from regnas_jax.spaces.scarlet import ScarletArch, ScarletS1Space


def _els_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(shape[2], shape[3], dtype=dtype)[None, None]


def _subsample(x, stride: int):
  """A stride-``s`` 1x1 conv reads pixels ``0, s, 2s, ...`` (no padding is ever needed)."""
  return x if stride == 1 else x[:, ::stride, ::stride]


def _stem(x, bn, train, w, stem_stride, impl, dtype):
  """Stem conv + BN + ReLU6, then the fixed separable conv (3x3 depthwise, 1x1 project)."""
  x = layers.conv(w[0], 3, stem_stride, name="stem_conv", dtype=dtype)(x)
  x = jax.nn.relu6(bn("stem_bn")(x, train))
  x = layers.DepthwiseConv2D(3, 1, impl, dtype, name="sep_dw")(x)
  x = jax.nn.relu6(bn("sep_dw_bn")(x, train))
  return bn("sep_proj_bn")(layers.conv(w[1], 1, name="sep_proj", dtype=dtype)(x), train)


def _head(module, head_ch, num_classes, masked) -> Head:
  """Head conv + BN + ReLU6, average pool, classifier (settings from ``module``)."""
  return Head(num_classes, head_ch, "relu6", dropout_rate=module.dropout_rate, masked=masked,
              bn_momentum=module.bn_momentum, bn_epsilon=module.bn_epsilon, dtype=module.dtype)


# ----------------------------------------------------------------------------------------------
# The masked supernet
# ----------------------------------------------------------------------------------------------
class ChoiceLayer(nn.Module):
  """One searchable layer: the shared branch at its largest shape (h-swish, elastic kernel,
  SE chosen by a weight) and the skip path (see module docstring)."""
  branch: ElasticIBN
  layout: Any                 # spaces.scarlet.LayerLayout
  els: bool
  # switch mode: one exact-size branch per (expand, SE) choice, index ``expand * n_se + se``
  # (``n_se`` 2 where SE is searched, else 1), and the skip path as the last branch
  variants: tuple = ()

  @nn.compact
  def __call__(self, x, skip, kernel_index, mid_mask, se_mask, se_on, train: bool, choice=None):
    b = self.layout
    k = self.param("els", _els_init, (1, 1, b.in_ch, b.out_ch), jnp.float32) if self.els else None

    def skip_path(x):
      s = _subsample(x, b.stride)
      if k is not None:
        return jnp.einsum("nhwc,cd->nhwd", s, k[0, 0].astype(s.dtype))
      return pad_channels(s, b.out_ch)

    if self.variants:
      fns = variant_branches(self.variants, train, b.residual) + [
          lambda mdl, x, kernel_index: skip_path(x)]
      return nn.switch(jnp.where(skip, len(self.variants), choice), fns, self, x, kernel_index)
    s = skip_path(x)
    h = self.branch(x, kernel_index, mid_mask, train, update=~skip, se_mask=se_mask,
                    se_weight=se_on.astype(jnp.float32))
    block = x + h if b.residual else h
    return jnp.where(skip, s, block)


class ScarletSupernet(Supernet):
  """The SCARLET S1/S2 supernet: one parameter tree, subnets chosen by ``arch`` data.

  ``model.apply(variables, images, arch, train=False)`` -> ``(N, num_classes)`` logits for
  ``images (N, R, R, 3)`` and a :class:`ScarletArch` of int arrays; train mode needs
  ``mutable=['batch_stats']``.  ``jax.vmap`` over ``arch`` scores a population.

  Attributes:
    space: an S1 or S2 space (its ``els`` decides the skip path).
    depthwise_impl: ``'auto'`` | ``'xla'`` | ``'shift'`` (see :func:`ops.depthwise_conv`).
    kernel_transform: OFA's learned kernel transform matrices for the smaller kernels.
    bn_momentum, bn_epsilon, dropout_rate, dtype: as for the other supernets.
    switch: switch mode (``regnas_jax.nn.supernet``): every layer branches on its skip, expand,
      SE and kernel choice (``lax.switch``) instead of masking them -- for members run one at a
      time.
  """
  space: ScarletS1Space
  depthwise_impl: str = "auto"
  kernel_transform: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  switch: bool = False

  switches = True

  @nn.compact
  def forward(self, images, arch: ScarletArch, train: bool = False):
    sp = self.space
    bn = lambda name: layers.MaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype,
                                             name=name)
    x = _stem(images.astype(self.dtype), bn, train, sp.widths, sp.stem_stride,
              self.depthwise_impl, self.dtype)
    skip, e, k, se = sp.decode(arch)
    for i, b in enumerate(sp.layers):
      mid = jnp.asarray(b.mid_choices)[e[i]]
      se_h = jnp.asarray(b.se_choices)[e[i]]
      branch = functools.partial(
          ElasticIBN, mid_ch=max(b.mid_choices), out_ch=b.out_ch, stride=b.stride, act="h_swish",
          kernel_sizes=sp.kernel_choices, depthwise="elastic",
          kernel_transform=self.kernel_transform, se_ch=max(b.se_choices) if sp.has_se else 0,
          se_gate="hsigmoid", depthwise_impl=self.depthwise_impl, bn_momentum=self.bn_momentum,
          bn_epsilon=self.bn_epsilon, dtype=self.dtype)
      variants, choice = (), None
      if self.switch:
        n_se = 2 if sp.has_se else 1
        variants = tuple(
            branch(mid_size=b.mid_choices[j], se_size=b.se_choices[j] if s_on else 0,
                   kernel_switch=True)
            for j in range(len(b.mid_choices)) for s_on in range(n_se))
        choice = e[i] * n_se + (se[i] > 0 if sp.has_se else 0)
      x = ChoiceLayer(branch(), b, sp.els, variants, name=b.name)(
          x, skip=skip[i] > 0, kernel_index=k[i], mid_mask=jnp.arange(max(b.mid_choices)) < mid,
          se_mask=jnp.arange(max(b.se_choices)) < se_h, se_on=se[i] > 0, train=train,
          choice=choice)
    return _head(self, sp.widths[2], sp.num_classes, masked=True)(x, train)

  def subnet_specs(self, arch: ScarletArch) -> tuple:
    """Exact layer shapes of the exported subnet ``arch`` (concrete) selects."""
    space = self.space
    a = space.validate(arch, population=False)
    skip, e, k, se = space.decode(a)
    out, real, pending = [], space.widths[1], False
    for i, b in enumerate(space.layers):
      if skip[i]:
        out.append(SkipSpec(b.name, real, b.stride))
        pending = True
        continue
      shortcut = "none"
      if b.residual:
        shortcut = ("conv" if space.els and pending else
                    "identity" if real == b.out_ch else "pad")
      out.append(IBNSpec(b.name, in_ch=real, out_ch=b.out_ch, mid_ch=int(b.mid_choices[e[i]]),
                         kernel=int(space.kernel_choices[k[i]]), stride=b.stride, act="h_swish",
                         se_ch=int(b.se_choices[e[i]]) if se[i] else 0, se_gate="hsigmoid",
                         shortcut=shortcut))
      real, pending = b.out_ch, False
    return tuple(out)

  def exact_module(self, arch: ScarletArch) -> "ScarletNet":
    """The standalone exact-shape module of one subnet (no variables; see :meth:`extract`)."""
    sp = self.space
    return ScarletNet(stem_ch=sp.widths[0], stem_stride=sp.stem_stride, sep_ch=sp.widths[1],
                      layers=self.subnet_specs(arch), head_ch=sp.widths[2],
                      num_classes=sp.num_classes, depthwise_impl=self.depthwise_impl,
                      bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                      dropout_rate=self.dropout_rate, dtype=self.dtype)

  def extract(self, variables, arch: ScarletArch):
    """Slice a supernet's variables to one subnet's exact shapes and fold its skips' maps.

    Args:
      variables: ``{'params', 'batch_stats'}`` of the supernet (statistics may be the ones
        re-calibrated for this subnet).
      arch: one concrete architecture.
    Returns:
      ``(ScarletNet, variables)``: plain skips, every ELS (or zero-pad) map folded into the next
      convolution (module docstring); the same logits as the supernet for this arch.
    """
    sp = self.space
    a = sp.validate(arch, population=False)
    specs = self.subnet_specs(a)
    params, stats = variables["params"], variables.get("batch_stats", {})
    fixed = ("stem_conv", "stem_bn", "sep_dw", "sep_dw_bn", "sep_proj", "sep_proj_bn", "head_bn",
             "classifier")
    new_p = {n: params[n] for n in fixed}
    new_s = {n: stats[n] for n in fixed if n in stats}
    pending = None  # (c_real, c_stream) map of the skips since the last bottleneck
    for s, b in zip(specs, sp.layers):
      p = params[b.name]
      if isinstance(s, SkipSpec):
        m = (jnp.asarray(p["els"][0, 0]) if sp.els else
             jnp.eye(b.in_ch, b.out_ch, dtype=jnp.float32))
        pending = m if pending is None else jnp.matmul(pending, m,
                                                       precision=jax.lax.Precision.HIGHEST)
        continue
      q, st = exact_ibn_variables(p, stats.get(b.name), s, sp.kernel_choices,
                                  self.kernel_transform, lambda k: _fold(pending, k))
      if s.shortcut == "conv":
        q["shortcut"] = {"kernel": pending[None, None]}
      new_p[b.name] = q
      if st:
        new_s[b.name] = st
      pending = None
    new_p["head_conv"] = {"kernel": _fold(pending, params["head_conv"]["kernel"])}
    out = {"params": new_p}
    if new_s:
      out["batch_stats"] = new_s
    return self.exact_module(a), out


# ----------------------------------------------------------------------------------------------
# The exact-shape subnet
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SkipSpec:
  """A skipped layer of an exported subnet: a plain subsample by ``stride``, ``ch`` channels
  in and out (its ELS map is folded into the next convolution)."""
  name: str
  ch: int
  stride: int


class ScarletNet(nn.Module):
  """A standalone SCARLET-style network with exact shapes (what
  :meth:`ScarletSupernet.extract` returns).

  ``model.apply(variables, images, train=False)``; train mode needs ``mutable=['batch_stats']``.
  """
  stem_ch: int
  stem_stride: int
  sep_ch: int
  layers: tuple            # IBNSpec (a bottleneck) or SkipSpec per layer
  head_ch: int
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
    x = _stem(images.astype(self.dtype), bn, train, (self.stem_ch, self.sep_ch),
              self.stem_stride, self.depthwise_impl, self.dtype)
    for s in self.layers:
      if isinstance(s, SkipSpec):
        x = _subsample(x, s.stride)
      else:
        x = IBN(s, self.depthwise_impl, self.bn_momentum, self.bn_epsilon, self.dtype,
                name=s.name)(x, train)
    return _head(self, self.head_ch, self.num_classes, masked=False)(x, train)


# ----------------------------------------------------------------------------------------------
# ELS folding on extraction
# ----------------------------------------------------------------------------------------------
def _fold(pending, kernel):
  """``P W`` for a 1x1 kernel ``W (1, 1, c, d)``; ``pending`` is ``P (c_real, c)`` or ``None``."""
  if pending is None:
    return kernel
  w = jnp.matmul(pending, kernel[0, 0], precision=jax.lax.Precision.HIGHEST)
  return w[None, None]


