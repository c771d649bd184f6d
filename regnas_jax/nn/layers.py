"""Flax Linen layers: elastic (masked) ones for supernets and plain ones for exact subnets.

Elastic layers always hold the largest shapes.  A subnet is selected by *data* passed at call
time (a channel mask, a kernel-size index, an "active" flag), never by Python values, so one
compiled function serves every subnet and ``jax.vmap`` over those arguments scores a population
with shared parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from regnas_jax.nn import ops

# OFA initialises convolutions with He init over fan-out ("he_fout").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def first(v, n: int, axis: int = -1):
  """The first ``n`` entries of ``v`` along ``axis`` (``v`` itself when it has ``n``): a
  layer's variables at its full width, used by an exact-size variant (switch mode)."""
  if v.shape[axis] == n:
    return v
  return lax.slice_in_dim(v, 0, n, axis=axis)


def _identity_init(key, shape, dtype=jnp.float32):
  del key
  return jnp.eye(shape[0], shape[1], dtype=dtype)


class MaskedBatchNorm(nn.Module):
  """BatchNorm (NHWC) whose output is multiplied by a channel mask after normalisation.

  A masked channel leaves plain BN as its bias, so the mask must come after BN; per-channel
  statistics never mix channels, so active channels see exactly the statistics of the
  exact-shape subnet.  In train mode the running statistics are updated only where
  ``mask & update`` holds (OFA updates ``running_mean[:C]`` of the active channels only), so an
  unused block or channel keeps its statistics.

  Variables: ``params/{scale, bias}``, ``batch_stats/{mean, var}`` (biased variance, as
  ``flax.linen.BatchNorm``), all of shape ``(C,)``.  ``momentum`` follows Flax's convention
  (0.9 here == PyTorch's 0.1).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Any = nn.initializers.ones
  features: int | None = None   # the variables' width C (None: the input's)

  @nn.compact
  def __call__(self, x, train: bool, mask=None, update=True):
    n = x.shape[-1]               # n < C in an exact-size variant: the first n channels
    c = self.features or n
    scale = first(self.param("scale", self.scale_init, (c,), jnp.float32), n)
    bias = first(self.param("bias", nn.initializers.zeros, (c,), jnp.float32), n)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    if train:
      mean, var = ops.batch_moments(x, tuple(range(x.ndim - 1)))
      if not self.is_initializing():
        keep = jnp.asarray(update) if mask is None else (mask & update)
        m = self.momentum
        for ra, new in ((ra_mean, mean), (ra_var, var)):
          old = first(ra.value, n)
          upd = jnp.where(keep, m * old + (1 - m) * new, old)
          ra.value = upd if n == c else ra.value.at[:n].set(upd)
    else:
      mean, var = first(ra_mean.value, n), first(ra_var.value, n)
    y = (x.astype(jnp.float32) - mean) * (scale * lax.rsqrt(var + self.epsilon)) + bias
    if mask is not None:
      y = y * mask
    return y.astype(self.dtype or x.dtype)


class DepthwiseConv2D(nn.Module):
  """Depthwise conv with a fixed kernel size; kernel ``(k, k, 1, C)``, no bias."""
  kernel_size: int
  strides: int = 1
  impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    k = self.param("kernel", conv_init, (self.kernel_size, self.kernel_size, 1, x.shape[-1]),
                   jnp.float32)
    return ops.depthwise_conv(x.astype(self.dtype or x.dtype), k, self.strides, self.impl)


class ElasticDepthwiseConv2D(nn.Module):
  """OFA's elastic-kernel depthwise conv: one ``(K, K, 1, C)`` kernel for ``K = max(sizes)``.

  ``kernel_index`` (an int array, may be traced / vmapped) picks a size; the kernel of each
  smaller size is derived as in :func:`ops.elastic_kernels` and zero-padded to ``K``, which
  gives exactly the output of the ``k x k`` conv under symmetric padding.  With ``transform``
  the learned ``(k*k, k*k)`` matrices (``7to5_matrix``, ``5to3_matrix``) are parameters,
  initialised to identity as in OFA.
  """
  kernel_sizes: Sequence[int]
  strides: int = 1
  impl: str = "auto"
  transform: bool = True
  dtype: Any = None
  channels: int | None = None   # the kernel's channels C (None: the input's)
  switch: bool = False          # lax.switch over the sizes (each at its own size; unbatched index)

  def derived_kernels(self, kernel, matrices):
    return ops.elastic_kernels(kernel, self.kernel_sizes, matrices)

  @nn.compact
  def __call__(self, x, kernel_index):
    sizes = tuple(self.kernel_sizes)
    big = sizes[-1]
    c = x.shape[-1]
    kernel = first(self.param("kernel", conv_init, (big, big, 1, self.channels or c),
                              jnp.float32), c)
    matrices = None
    if self.transform:
      matrices = {}
      for src, dst in zip(sizes[::-1], sizes[-2::-1]):
        name = ops.transform_matrix_name(src, dst)
        matrices[name] = self.param(name, _identity_init, (dst * dst, dst * dst), jnp.float32)
    derived = self.derived_kernels(kernel, matrices)
    x = x.astype(self.dtype or x.dtype)
    if self.switch and len(derived) > 1:
      conv = lambda j, x, ws: ops.depthwise_conv(x, ws[j], self.strides, self.impl)
      return lax.switch(kernel_index, [functools.partial(conv, j) for j in range(len(derived))],
                        x, tuple(derived))
    cands = jnp.stack([ops.pad_kernel(k, big) for k in derived])
    w = jnp.take(cands, kernel_index, axis=0) if len(derived) > 1 else cands[0]
    return ops.depthwise_conv(x, w, self.strides, self.impl)


class MixedConv(nn.Module):
  """TuNAS's kernel-size choice: one kernel per size (``kernel_{k}``: ``(k, k, C_in, C_out)``,
  or ``(k, k, 1, C)`` when ``depthwise``; sizes are not nested as in OFA), run as one conv of
  the largest size with the ``weights``-mixture ``(len(kernel_sizes),)`` of the zero-padded
  kernels: one-hot weights give exactly the chosen size's conv, uniform ones the mean of all."""
  kernel_sizes: Sequence[int]
  features: int = 0            # output channels of a full conv (ignored when depthwise)
  strides: int = 1
  depthwise: bool = False
  impl: str = "auto"
  dtype: Any = None

  @nn.compact
  def __call__(self, x, weights):
    c = x.shape[-1]
    shape = (lambda k: (k, k, 1, c)) if self.depthwise else (lambda k: (k, k, c, self.features))
    ks = [self.param(f"kernel_{k}", conv_init, shape(k), jnp.float32)
          for k in self.kernel_sizes]
    big = self.kernel_sizes[-1]
    w = sum(weights[i] * ops.pad_kernel(k, big) for i, k in enumerate(ks))
    dt = self.dtype or x.dtype
    if self.depthwise:
      return ops.depthwise_conv(x.astype(dt), w.astype(dt), self.strides, self.impl)
    p = big // 2
    return lax.conv_general_dilated(x.astype(dt), w.astype(dt), (self.strides,) * 2,
                                    ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


class SqueezeExcite(nn.Module):
  """Squeeze-and-excite as in MobileNetV3: mean pool -> Dense+ReLU -> Dense -> h-sigmoid gate.

  ``hidden_mask`` (bool ``(hidden,)``) zeroes unused hidden units of an elastic SE; input
  channels that are masked to zero pool to zero and so never reach the hidden units.
  ``gate='sigmoid'`` uses a plain sigmoid (TuNAS's MobileNetV3-Like space).
  """
  hidden: int
  dtype: Any = None
  gate: str = "hsigmoid"
  # an exact-size variant (switch mode): the variables' channels (None: the input's) and the
  # hidden units used (None: all)
  channels: int | None = None
  hidden_size: int | None = None

  @nn.compact
  def __call__(self, x, hidden_mask=None):
    s = jnp.mean(x, axis=(1, 2))
    if self.channels is None and self.hidden_size is None:
      dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)
      s = jax.nn.relu(dense(self.hidden, "reduce")(s))
    else:   # the variant's first hidden units and channels
      c = self.channels or x.shape[-1]
      s = jax.nn.relu(SlicedDense(self.hidden, c, self.hidden_size, dtype=self.dtype,
                                  name="reduce")(s))
      dense = lambda n, name: SlicedDense(c, self.hidden, n, dtype=self.dtype, name=name)
    if hidden_mask is not None:
      s = s * hidden_mask
    s = dense(x.shape[-1], "expand")(s)
    s = jax.nn.sigmoid(s) if self.gate == "sigmoid" else ops.hsigmoid(s)
    return x * s[:, None, None, :].astype(x.dtype)


class PointwiseConv(nn.Module):
  """Bias-free 1x1 conv as a matrix product over channels; kernel ``(1, 1, C_in, C_out)``.

  Same parameters as ``nn.Conv(features, (1, 1))``; written as a dot because XLA on CPU runs
  the dot (and its gradient) faster than a 1x1 convolution.
  """
  features: int
  dtype: Any = None
  in_features: int | None = None   # an exact-size variant: the kernel's inputs (None: the input's)
  out_size: int | None = None      # and the outputs used (the first ones; None: all)

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.param("kernel", conv_init, (1, 1, self.in_features or c, self.features), jnp.float32)
    k = first(first(k[0, 0], c, 0), self.out_size or self.features)
    dt = self.dtype or x.dtype
    return jnp.einsum("nhwc,cd->nhwd", x.astype(dt), k.astype(dt))


class SlicedDense(nn.Module):
  """``nn.Dense``'s variables (same names, shapes, initialisers and order) used at a smaller
  static shape: the first ``x.shape[-1]`` of ``in_features`` inputs and the first ``out_size``
  of ``features`` outputs (an exact-size variant's widths, switch mode)."""
  features: int
  in_features: int
  out_size: int | None = None
  use_bias: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x):
    c, n = x.shape[-1], self.out_size or self.features
    k = self.param("kernel", nn.initializers.lecun_normal(), (self.in_features, self.features),
                   jnp.float32)
    dt = self.dtype or jnp.result_type(x.dtype, jnp.float32)
    y = jnp.dot(x.astype(dt), first(first(k, c, 0), n).astype(dt))
    if self.use_bias:
      y = y + first(self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32),
                    n).astype(dt)
    return y


def conv(features: int, kernel: int = 1, stride: int = 1, name: str | None = None, dtype=None,
         in_features: int | None = None, out_size: int | None = None):
  """Bias-free conv with symmetric ``kernel // 2`` padding and He fan-out init.

  ``in_features`` / ``out_size`` (1x1 stride-1 convs only): the kernel's full input width and
  the outputs used, in an exact-size variant of a block (:class:`PointwiseConv`)."""
  if kernel == 1 and stride == 1:
    return PointwiseConv(features, dtype, in_features, out_size, name=name)
  if in_features is not None or out_size is not None:
    raise ValueError("conv: in_features / out_size are for 1x1 stride-1 convs only")
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                 use_bias=False, kernel_init=conv_init, dtype=dtype, name=name)


def batch_norm(train: bool, momentum: float, epsilon: float, dtype, name: str,
               scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """Plain Flax BatchNorm for exact-shape subnets (same variable names as MaskedBatchNorm)."""
  # Two-pass variance: E[x^2] - E[x]^2 loses digits when |mean| >> std (small batches).
  return nn.BatchNorm(not train, momentum=momentum, epsilon=epsilon, dtype=dtype,
                      use_fast_variance=False, scale_init=scale_init, name=name)
