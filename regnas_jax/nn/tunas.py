"""TuNAS's weight-sharing supernet for its three spaces, the exact subnet and extraction.

Weight sharing as TuNAS does it (``tunas/rematlib/mobile_model_v3.py``), written as masks over
one parameter tree so that a subnet is *data* (one compiled program serves every subnet and
``jax.vmap`` over archs scores a population):

* **widths** -- every tensor holds its group's largest width; a subnet's width is a first-N
  channel mask applied after BN (a group's mask is shared by every layer that writes it, so
  residual sums stay aligned);
* **operation collapsing** -- per IBN layer one expand conv, one project conv, BN and SE weights
  shared by all expansions and kernel sizes; the expansion is a first-N mask over the expanded
  channels (``scale(c_in * e)`` of the *active* input width);
* **kernel sizes** -- one depthwise kernel *per size* (TuNAS does not nest them); a choice is a
  mixture ``sum_i w_i pad(K_i)`` with one-hot weights, run as one depthwise conv of the largest
  size (zero-padded kernels give exactly the small convs' outputs).  The same for the stem's
  kernel choice;
* **zero / optional layers** -- a gate on a residual branch (``x + g * branch(x)``); a gated-off
  layer does not update its BN statistics.

The IBN branch (``blocks.ElasticIBN`` with ``depthwise='mixed'``, sigmoid SE chosen by a
weight), its exact twin (``blocks.IBN``) and the head (``blocks.Head``) are the ones the OFA and
SCARLET supernets use.

**Op warmup** (TuNAS: with probability p run all ops of a choice and average them) is the
optional ``average`` argument: a bool per op decision (``stem_kernel``, ``sep_kernel``,
``sep_on``, ``on``, ``kernel``, ``se``) that replaces that decision's one-hot weights by uniform
ones -- averaged kernels (the mean of depthwise convs is the depthwise conv of the mean kernel),
half-gated optional layers, half SE.  **Filter warmup** (all filters) needs no supernet support:
it is the arch with the largest widths and expansions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from regnas_jax.nn import layers, ops
from regnas_jax.nn.blocks import IBN, ElasticIBN, Head, IBNSpec
from regnas_jax.nn.layers import MixedConv
from regnas_jax.nn.common import bn_slice, se_slice
from regnas_jax.nn.supernet import Supernet
from regnas_jax.spaces.tunas import TunasArch, TunasSpace, scale_filters

OP_DECISIONS = ("stem_kernel", "sep_kernel", "sep_on", "on", "kernel", "se")


def _weights(index, n: int, average=None):
  """One-hot ``(..., n)`` weights of ``index``; uniform where ``average`` holds."""
  w = jax.nn.one_hot(index, n, dtype=jnp.float32)
  if average is None:
    return w
  return jnp.where(jnp.asarray(average)[..., None], jnp.full_like(w, 1.0 / n), w)


def _first(n_max: int, n):
  return jnp.arange(n_max) < n


def _scale(v):
  """``scale_filters`` of traced values (already multiplied)."""
  return jnp.maximum(8.0, jnp.floor(v / 8.0 + 0.5) * 8.0)


class IBNLayer(nn.Module):
  """One IBN layer of the supernet: the shared branch (per-size depthwise kernels mixed by
  weights, sigmoid SE chosen by a weight) plus TuNAS's gated shortcut on optional layers
  (``x + gate * branch(x)``; a gated-off layer keeps its BN statistics)."""
  branch: ElasticIBN
  optional: bool

  @nn.compact
  def __call__(self, x, gate, kernel_weights, mid_mask, se_mask, se_weights, out_mask,
               train: bool):
    h = self.branch(x, kernel_weights, mid_mask, train, update=gate > 0, se_mask=se_mask,
                    se_weight=se_weights[1] if self.branch.se_ch else None, out_mask=out_mask)
    return x + gate.astype(h.dtype) * h if self.optional else h


class TunasSupernet(Supernet):
  """The supernet of a TuNAS space: one parameter tree, subnets chosen by ``arch`` data.

  ``model.apply(variables, images, arch, train=False, average=None)`` -> ``(N, num_classes)``
  logits for ``images (N, R, R, 3)`` and a :class:`TunasArch`; train mode needs
  ``mutable=['batch_stats']``.  ``average``: op warmup flags (module doc).

  Attributes:
    space: a ProxylessNAS, ProxylessNAS-Enlarged or MobileNetV3-Like space.
    depthwise_impl: ``'auto'`` | ``'xla'`` | ``'shift'`` (see :func:`ops.depthwise_conv`).
    bn_momentum, bn_epsilon, dropout_rate, dtype: as for the other supernets.
  """
  space: TunasSpace
  depthwise_impl: str = "auto"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  op_average = True
  op_decisions = OP_DECISIONS

  @nn.compact
  def forward(self, images, arch: TunasArch, train: bool = False, average=None):
    sp = self.space
    av = (lambda name: None) if average is None else (lambda name: average[name])
    bn = lambda name, c: layers.MaskedBatchNorm(self.bn_momentum, self.bn_epsilon, self.dtype,
                                                features=c, name=name)
    wmax = sp.max_widths
    width = sp.widths(arch)
    gmask = lambda g: _first(wmax[g], width[g])
    ks = sp.kernel_choices
    first_act = ops.activation(_stem_act(sp))

    x = images.astype(self.dtype)
    x = MixedConv(sp.stem_kernels, wmax[0], sp.stem_stride, dtype=self.dtype, name="stem_conv")(
        x, _weights(arch.stem_kernel, len(sp.stem_kernels), av("stem_kernel")))
    x = first_act(bn("stem_bn", wmax[0])(x, train, gmask(0)))

    sep_w = _weights(arch.sep_on, len(sp.sep_choices), av("sep_on"))
    sep_gate = sep_w[-1] if sp.v3 else jnp.float32(1.0)
    h = MixedConv(ks, depthwise=True, impl=self.depthwise_impl, dtype=self.dtype, name="sep_dw")(
        x, _weights(arch.sep_kernel, len(ks), av("sep_kernel")))
    h = jax.nn.relu(bn("sep_dw_bn", wmax[0])(h, train, gmask(0), sep_gate > 0))
    h = layers.conv(wmax[sp.sep_group], 1, name="sep_proj", dtype=self.dtype)(h)
    h = bn("sep_proj_bn", wmax[sp.sep_group])(h, train, gmask(sp.sep_group), sep_gate > 0)
    x = x + sep_gate.astype(h.dtype) * h if sp.v3 else h

    on_w = _weights(arch.on, 2, av("on"))[..., 1]
    k_w = _weights(arch.kernel, len(ks), av("kernel"))
    se_w = _weights(arch.se, len(sp.se_choices), av("se"))
    exp = jnp.asarray(sp.expand_choices, jnp.float32)
    for b in sp.layers:
      mid_max = scale_filters(wmax[b.in_group], max(sp.expand_choices))
      se_max = scale_filters(mid_max, 0.25)
      mid = _scale(width[b.in_group] * exp[arch.expand[b.index]])
      gate = on_w[b.optional] if b.optional >= 0 else jnp.float32(1.0)
      branch = ElasticIBN(mid_ch=mid_max, out_ch=wmax[b.out_group], stride=b.stride, act=b.act,
                          kernel_sizes=ks, depthwise="mixed", kernel_transform=False,
                          se_ch=se_max if sp.v3 else 0, se_gate="sigmoid",
                          depthwise_impl=self.depthwise_impl, bn_momentum=self.bn_momentum,
                          bn_epsilon=self.bn_epsilon, dtype=self.dtype)
      x = IBNLayer(branch, b.optional >= 0, name=b.name)(
          x, gate=gate, kernel_weights=k_w[b.index], mid_mask=_first(mid_max, mid),
          se_mask=_first(se_max, _scale(mid * 0.25)), se_weights=se_w[b.index],
          out_mask=gmask(b.out_group), train=train)

    hg = sp.head_groups
    head = _head(self, sp.num_classes, _stem_act(sp), wmax[hg[0]], wmax[hg[1]] if sp.v3 else 0,
                 masked=True)
    return head(x, train, gmask(hg[0]), gmask(hg[1]) if sp.v3 else None)

  def subnet_specs(self, arch: TunasArch) -> "NetSpec":
    """Exact shapes of the subnet ``arch`` (concrete) selects."""
    space = self.space
    a = space.validate(arch, population=False)
    w = [int(x) for x in space.widths(a)]
    on = space.layer_on(a)
    out = []
    for b in space.layers:
      if not on[b.index]:
        continue
      mid = scale_filters(w[b.in_group], space.expand_choices[a.expand[b.index]])
      out.append(IBNSpec(b.name, in_ch=w[b.in_group], out_ch=w[b.out_group], mid_ch=mid,
                         kernel=space.kernel_choices[a.kernel[b.index]], stride=b.stride,
                         act=b.act, se_ch=scale_filters(mid, 0.25) if a.se[b.index] else 0,
                         se_gate="sigmoid",
                         shortcut="identity" if b.optional >= 0 else "none"))
    hg = space.head_groups
    sep = bool(space.sep_active(a))
    return NetSpec(stem_kernel=space.stem_kernels[a.stem_kernel], stem_stride=space.stem_stride,
                   stem_ch=w[0], stem_act=_stem_act(space),
                   sep_kernel=space.kernel_choices[a.sep_kernel] if sep else 0,
                   sep_ch=w[space.sep_group], sep_residual=space.v3, layers=tuple(out),
                   head_ch=w[hg[0]], head2_ch=w[hg[1]] if space.v3 else 0)

  def exact_module(self, arch: TunasArch) -> "TunasNet":
    """The standalone exact-shape module of one subnet (no variables; see :meth:`extract`)."""
    return TunasNet(self.subnet_specs(arch), self.space.num_classes, self.depthwise_impl,
                    self.bn_momentum, self.bn_epsilon, self.dropout_rate, self.dtype)

  def extract(self, variables, arch: TunasArch):
    """Slice a supernet's variables to one subnet's exact shapes.

    Returns ``(TunasNet, variables)`` computing the same logits as the supernet for ``arch``.
    """
    spec = self.subnet_specs(arch)
    params, stats = variables["params"], variables.get("batch_stats", {})
    c0 = spec.stem_ch
    p = {"stem_conv": {"kernel": params["stem_conv"][f"kernel_{spec.stem_kernel}"][..., :c0]},
         "stem_bn": bn_slice(params["stem_bn"], c0)}
    st = {"stem_bn": bn_slice(stats["stem_bn"], c0)} if stats else {}
    if spec.sep_kernel:
      p["sep_dw"] = {"kernel": params["sep_dw"][f"kernel_{spec.sep_kernel}"][..., :c0]}
      p["sep_dw_bn"] = bn_slice(params["sep_dw_bn"], c0)
      p["sep_proj"] = {"kernel": params["sep_proj"]["kernel"][:, :, :c0, :spec.sep_ch]}
      p["sep_proj_bn"] = bn_slice(params["sep_proj_bn"], spec.sep_ch)
      if stats:
        st["sep_dw_bn"] = bn_slice(stats["sep_dw_bn"], c0)
        st["sep_proj_bn"] = bn_slice(stats["sep_proj_bn"], spec.sep_ch)
    for ls in spec.layers:
      q = params[ls.name]
      cin, mid, cout = ls.in_ch, ls.mid_ch, ls.out_ch
      lp = {"expand": {"kernel": q["expand"]["kernel"][:, :, :cin, :mid]},
            "expand_bn": bn_slice(q["expand_bn"], mid),
            "dw": {"kernel": q["dw"][f"kernel_{ls.kernel}"][..., :mid]},
            "dw_bn": bn_slice(q["dw_bn"], mid),
            "proj": {"kernel": q["proj"]["kernel"][:, :, :mid, :cout]},
            "proj_bn": bn_slice(q["proj_bn"], cout)}
      if ls.se_ch:
        lp["se"] = se_slice(q["se"], mid, ls.se_ch)
      p[ls.name] = lp
      if stats:
        s = stats[ls.name]
        st[ls.name] = {"expand_bn": bn_slice(s["expand_bn"], mid),
                       "dw_bn": bn_slice(s["dw_bn"], mid), "proj_bn": bn_slice(s["proj_bn"], cout)}
    c_last = spec.layers[-1].out_ch   # a block's first layer is never off
    p["head_conv"] = {"kernel": params["head_conv"]["kernel"][:, :, :c_last, :spec.head_ch]}
    p["head_bn"] = bn_slice(params["head_bn"], spec.head_ch)
    if stats:
      st["head_bn"] = bn_slice(stats["head_bn"], spec.head_ch)
    c = spec.head_ch
    if spec.head2_ch:
      d = params["head_dense"]
      p["head_dense"] = {"kernel": d["kernel"][:c, :spec.head2_ch],
                         "bias": d["bias"][:spec.head2_ch]}
      c = spec.head2_ch
    p["classifier"] = {"kernel": params["classifier"]["kernel"][:c],
                       "bias": params["classifier"]["bias"]}
    out = {"params": p}
    if st:
      out["batch_stats"] = st
    return self.exact_module(arch), out


def _stem_act(space) -> str:
  """Activation of the stem and the head conv."""
  return "h_swish" if space.v3 else "relu"


def _head(module, num_classes, act, head_ch, dense_ch, masked) -> Head:
  """Head conv + BN + ``act``, average pool, on MobileNetV3-Like a dense layer (``head_dense``,
  with bias) + h-swish (``dense_ch`` 0: none), classifier."""
  return Head(num_classes, conv_ch=head_ch, act=act, mix_ch=dense_ch, mix_name="head_dense",
              mix_bias=True, mix_act="h_swish", dropout_rate=module.dropout_rate, masked=masked,
              bn_momentum=module.bn_momentum, bn_epsilon=module.bn_epsilon, dtype=module.dtype)


# ----------------------------------------------------------------------------------------------
# The exact-shape subnet
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NetSpec:
  """Exact shape of a whole subnet."""
  stem_kernel: int
  stem_stride: int
  stem_ch: int
  stem_act: str
  sep_kernel: int          # 0: no sepconv (an off optional one)
  sep_ch: int
  sep_residual: bool
  layers: tuple            # of blocks.IBNSpec
  head_ch: int
  head2_ch: int            # 0: no second head conv (ProxylessNAS)


class TunasNet(nn.Module):
  """A standalone network of a TuNAS space with exact shapes (what
  :meth:`TunasSupernet.extract` returns).

  ``model.apply(variables, images, train=False)``; train mode needs ``mutable=['batch_stats']``.
  """
  spec: NetSpec
  num_classes: int
  depthwise_impl: str = "auto"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool = False):
    s = self.spec
    bn = lambda name: layers.batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype, name)
    act = ops.activation(s.stem_act)
    x = layers.conv(s.stem_ch, s.stem_kernel, s.stem_stride, name="stem_conv",
                    dtype=self.dtype)(images.astype(self.dtype))
    x = act(bn("stem_bn")(x))
    if s.sep_kernel:
      h = layers.DepthwiseConv2D(s.sep_kernel, 1, self.depthwise_impl, self.dtype,
                                 name="sep_dw")(x)
      h = jax.nn.relu(bn("sep_dw_bn")(h))
      h = bn("sep_proj_bn")(layers.conv(s.sep_ch, 1, name="sep_proj", dtype=self.dtype)(h))
      x = x + h if s.sep_residual else h
    for ls in s.layers:
      x = IBN(ls, self.depthwise_impl, self.bn_momentum, self.bn_epsilon, self.dtype,
              name=ls.name)(x, train)
    return _head(self, self.num_classes, s.stem_act, s.head_ch, s.head2_ch, masked=False)(
        x, train)


