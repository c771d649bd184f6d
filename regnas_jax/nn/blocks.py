"""The inverted-bottleneck block and the classifier head shared by the supernets.

OFA-MobileNetV3's MBConv, TuNAS's IBN and SCARLET's bottleneck are one block::

  expand 1x1 -> BN -> act -> k x k depthwise (stride) -> BN -> act -> [SE] -> project 1x1 -> BN

They differ in the activation, in how the kernel size is chosen (OFA and SCARLET: one elastic
kernel, the smaller ones derived from it; TuNAS: one kernel per size, mixed by weights), in the
SE gate (h-sigmoid / sigmoid) and whether SE is searched (TuNAS, SCARLET-S2) or fixed per block
(OFA), and in the shortcut.  This module writes the block once:

* :class:`ElasticIBN` -- the masked *branch* of a supernet layer at its largest shape, the
  subnet chosen by data (channel masks, a kernel index or kernel weights, an SE weight, a BN
  update flag).  The caller applies its shortcut, since that is where the supernets differ:
  OFA ``where(active, x + h, x)``, TuNAS ``x + gate * h``, SCARLET
  ``where(skip, skip_path(x), x + h or h)``;
* :class:`IBNSpec` / :class:`IBN` -- the exact-shape block of an extracted subnet (plain Flax
  layers), with the shortcut as data (``none``, ``identity``, ``pad``, ``conv``);
* :class:`Head` -- 1x1 conv + BN + act, global average pool, optional feature-mix dense,
  dropout, classifier; masked (supernets) or plain (exact subnets).

:class:`ElasticIBN` and :class:`Head` are frozen dataclasses, not Linen modules: they are called
inside a parent's ``@nn.compact`` method and their layers become the parent's children, so the
parameter names (``expand``, ``expand_bn``, ``dw``, ``dw_bn``, ``se``, ``proj``, ``proj_bn``;
``head_conv``, ``head_bn``, ``feature_mix`` / ``head_dense``, ``classifier``) sit where the exact
subnet, ``extract`` and saved checkpoints expect them, with no extra nesting level.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from regnas_jax.nn import layers, ops
from regnas_jax.nn.common import bn_slice, se_slice

DEPTHWISE_KINDS = ("elastic", "mixed")
SHORTCUTS = ("none", "identity", "pad", "conv")


def pad_channels(x, c: int):
  """Zero-pad the channels of ``x`` (NHWC) to ``c``."""
  return x if x.shape[-1] == c else jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, c - x.shape[-1]),))


# ----------------------------------------------------------------------------------------------
# The masked branch of a supernet layer
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ElasticIBN:
  """The elastic inverted-bottleneck branch at its largest shape (module docstring).

  Attributes:
    mid_ch, out_ch: largest expanded and output widths (the parameters' shapes).
    stride: of the depthwise conv.
    act: activation after both middle BNs (``ops.ACTIVATIONS``).
    kernel_sizes: the kernel-size choices, ascending.
    depthwise: ``'elastic'`` -- one ``K x K`` kernel (``layers.ElasticDepthwiseConv2D``,
      OFA's centre crops and optional transform matrices; ``kernel`` is a size index) or
      ``'mixed'`` -- one kernel per size (``layers.MixedConv``; ``kernel`` are mixture weights
      ``(len(kernel_sizes),)``).
    kernel_transform: OFA's learned transform matrices (``'elastic'`` only).
    se_ch: largest SE hidden width; 0: no SE.
    se_gate: ``'hsigmoid'`` or ``'sigmoid'``.
    depthwise_impl, bn_momentum, bn_epsilon, dtype: as for the supernets.
    mid_size, se_size: an exact-size variant (switch mode; ``None``: the largest shapes): the
      expanded and SE widths computed, the first ones of the variables; ``se_size`` 0 drops
      the SE.
    kernel_switch: the depthwise layer branches on the kernel index (``lax.switch``, each size
      at its own shape) instead of zero-padding to the largest -- switch mode (``'elastic'``).
  """
  mid_ch: int
  out_ch: int
  stride: int
  act: str
  kernel_sizes: Sequence[int]
  depthwise: str = "elastic"
  kernel_transform: bool = True
  se_ch: int = 0
  se_gate: str = "hsigmoid"
  depthwise_impl: str = "auto"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = None
  mid_size: int | None = None
  se_size: int | None = None
  kernel_switch: bool = False

  def __post_init__(self):
    if self.depthwise not in DEPTHWISE_KINDS:
      raise ValueError(f"depthwise: {self.depthwise!r} is not one of {DEPTHWISE_KINDS}")

  def __call__(self, x, kernel, mid_mask, train: bool, *, update=True, se_mask=None,
               se_weight=None, out_mask=None):
    """The branch output ``(N, H', W', out_ch)``; call inside a parent's compact method.

    Args:
      x: ``(N, H, W, C_in)`` (channels past the subnet's input width are 0).
      kernel: int size index (``'elastic'``) or float mixture weights (``'mixed'``).
      mid_mask: bool ``(mid_ch,)``, the subnet's expanded channels (applied after both BNs).
      train: batch statistics, and running-statistics updates where ``mask & update``.
      update: bool, whether this layer runs (an unused one keeps its BN statistics).
      se_mask: bool ``(se_ch,)``, the subnet's SE hidden units.
      se_weight: ``None`` (SE always applied) or a float ``w``: ``(1 - w) * h + w * se(h)``,
        exactly ``h`` or ``se(h)`` for ``w`` in {0, 1}, their mean for 0.5 (op warmup).
      out_mask: bool ``(out_ch,)`` after the last BN, or ``None`` (fixed output width).
    """
    act = ops.activation(self.act)

    def bn(name, h, mask, full):
      return layers.MaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype,
                                    features=full, name=name)(h, train, mask, update)

    h = layers.conv(self.mid_ch, 1, name="expand", dtype=self.dtype, out_size=self.mid_size)(x)
    h = act(bn("expand_bn", h, mid_mask, self.mid_ch))
    if self.depthwise == "elastic":
      dw = layers.ElasticDepthwiseConv2D(self.kernel_sizes, self.stride, self.depthwise_impl,
                                         self.kernel_transform, self.dtype, self.mid_ch,
                                         self.kernel_switch, name="dw")
    else:
      dw = layers.MixedConv(self.kernel_sizes, strides=self.stride, depthwise=True,
                            impl=self.depthwise_impl, dtype=self.dtype, name="dw")
    h = act(bn("dw_bn", dw(h, kernel), mid_mask, self.mid_ch))
    if self.se_ch and self.se_size != 0:
      sized = self.mid_size is not None or self.se_size is not None
      g = layers.SqueezeExcite(self.se_ch, self.dtype, self.se_gate,
                               self.mid_ch if sized else None, self.se_size, name="se")(h, se_mask)
      h = g if se_weight is None else (1 - se_weight) * h + se_weight * g
    h = layers.conv(self.out_ch, 1, name="proj", dtype=self.dtype,
                    in_features=self.mid_ch if self.mid_size else None)(h)
    return bn("proj_bn", h, out_mask, self.out_ch)


def variant_branches(variants: Sequence[ElasticIBN], train: bool, residual: bool) -> list:
  """Switch mode: one ``flax.linen.switch`` branch ``(module, x, kernel) -> x + h`` (or ``h``)
  per exact-size variant of a block's branch (``mid_size`` / ``se_size`` set, usually
  ``kernel_switch``); no masks inside.  Called in the parent's compact method, whose module the
  switch passes as ``module``, so every variant's layers are the parent's (shared) children."""
  def run(v):
    def fn(mdl, x, kernel):
      h = v(x, kernel, None, train, se_mask=None)
      return x + h if residual else h
    return fn
  return [run(v) for v in variants]


# ----------------------------------------------------------------------------------------------
# The exact-shape block
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IBNSpec:
  """Exact shape of one inverted-bottleneck block of an extracted subnet.

  ``se_ch`` 0: no SE.  ``shortcut``: ``'none'``, ``'identity'`` (``x + h``), ``'pad'``
  (zero-pad ``x`` to ``out_ch``) or ``'conv'`` (a bias-free 1x1 conv ``shortcut``: SCARLET's
  folded ELS map).
  """
  name: str
  in_ch: int
  out_ch: int
  mid_ch: int
  kernel: int
  stride: int
  act: str
  se_ch: int = 0
  se_gate: str = "hsigmoid"
  shortcut: str = "none"

  def __post_init__(self):
    if self.shortcut not in SHORTCUTS:
      raise ValueError(f"shortcut: {self.shortcut!r} is not one of {SHORTCUTS}")


class IBN(nn.Module):
  """Plain inverted-bottleneck block (``flax.linen`` layers and a fixed-size depthwise conv;
  parameter names as in :class:`ElasticIBN`)."""
  spec: IBNSpec
  depthwise_impl: str = "auto"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    s = self.spec
    act = ops.activation(s.act)
    bn = lambda name: layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype, name)
    h = act(bn("expand_bn")(layers.conv(s.mid_ch, 1, name="expand", dtype=self.dtype)(x)))
    h = layers.DepthwiseConv2D(s.kernel, s.stride, self.depthwise_impl, self.dtype, name="dw")(h)
    h = act(bn("dw_bn")(h))
    if s.se_ch:
      h = layers.SqueezeExcite(s.se_ch, self.dtype, s.se_gate, name="se")(h)
    h = bn("proj_bn")(layers.conv(s.out_ch, 1, name="proj", dtype=self.dtype)(h))
    if s.shortcut == "identity":
      return x + h
    if s.shortcut == "pad":
      return pad_channels(x, s.out_ch) + h
    if s.shortcut == "conv":
      return layers.conv(s.out_ch, 1, name="shortcut", dtype=self.dtype)(x) + h
    return h


def exact_ibn_variables(p, st, spec: IBNSpec, kernel_choices, transform: bool,
                        fold=lambda k: k) -> tuple[dict, dict | None]:
  """``(params, batch_stats or None)`` of ``IBN(spec)`` sliced from an elastic-kernel
  :class:`ElasticIBN`'s ``p`` / ``st``: the first ``spec.mid_ch`` expanded channels and SE
  units, the derived ``spec.kernel`` depthwise kernel (OFA's transform with ``transform``);
  ``fold`` maps the sliced expand kernel (SCARLET folds its skips' map into it)."""
  m = spec.mid_ch
  dw = p["dw"]
  matrices = {n: v for n, v in dw.items() if n != "kernel"} if transform else None
  kern = dict(zip(kernel_choices, ops.elastic_kernels(dw["kernel"], kernel_choices,
                                                      matrices)))[spec.kernel]
  q = {"expand": {"kernel": fold(p["expand"]["kernel"][..., :m])},
       "expand_bn": bn_slice(p["expand_bn"], m),
       "dw": {"kernel": kern[..., :m]},
       "dw_bn": bn_slice(p["dw_bn"], m),
       "proj": {"kernel": p["proj"]["kernel"][:, :, :m, :]},
       "proj_bn": p["proj_bn"]}
  if spec.se_ch:
    q["se"] = se_slice(p["se"], m, spec.se_ch)
  if not st:
    return q, None
  return q, {"expand_bn": bn_slice(st["expand_bn"], m), "dw_bn": bn_slice(st["dw_bn"], m),
             "proj_bn": st["proj_bn"]}


# ----------------------------------------------------------------------------------------------
# The classifier head
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Head:
  """Classifier head: ``head_conv`` 1x1 + ``head_bn`` + act (none when ``conv_ch`` is 0),
  global average pool, optional feature-mix dense + act, dropout in train mode, ``classifier``.

  Attributes:
    num_classes: classifier outputs.
    conv_ch: width of the 1x1 conv (0: pool the input directly, as ResNet).
    act: activation after ``head_bn``.
    mix_ch: width of the feature-mix dense (0: none); ``mix_name`` its parameter name
      (OFA: ``feature_mix``, no bias; TuNAS: ``head_dense``, with bias), ``mix_act`` its
      activation.
    dropout_rate: before the classifier (needs a ``'dropout'`` rng in train mode).
    masked: ``layers.MaskedBatchNorm`` (supernets: ``conv_mask`` / ``mix_mask`` select the
      subnet's widths) or ``flax.linen.BatchNorm`` (exact subnets).
  """
  num_classes: int
  conv_ch: int = 0
  act: str = "relu"
  mix_ch: int = 0
  mix_name: str = "feature_mix"
  mix_bias: bool = False
  mix_act: str = "h_swish"
  dropout_rate: float = 0.0
  masked: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = None

  def __call__(self, x, train: bool, conv_mask=None, mix_mask=None):
    """``(N, H, W, C)`` features -> float32 logits ``(N, num_classes)``; call inside a parent's
    compact method.  Masks: bool ``(conv_ch,)`` / ``(mix_ch,)`` (masked heads only)."""
    if self.conv_ch:
      x = layers.conv(self.conv_ch, 1, name="head_conv", dtype=self.dtype)(x)
      if self.masked:
        x = layers.MaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype,
                                   features=self.conv_ch, name="head_bn")(x, train, conv_mask)
      else:
        x = layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype, "head_bn")(x)
      x = ops.activation(self.act)(x)
    x = jnp.mean(x, axis=(1, 2))
    dense = lambda n, bias, name: nn.Dense(n, use_bias=bias, dtype=self.dtype, name=name)
    if self.mix_ch:
      x = dense(self.mix_ch, self.mix_bias, self.mix_name)(x)
      if mix_mask is not None:
        x = x * mix_mask
      x = ops.activation(self.mix_act)(x)
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return dense(self.num_classes, True, "classifier")(x).astype(jnp.float32)
