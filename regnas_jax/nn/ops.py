"""Pure array functions shared by supernets and exact-shape subnets.

Layout is NHWC throughout; conv kernels are HWIO as in ``flax.linen.Conv`` (a depthwise kernel
is ``(k, k, 1, C)``).  Padding is symmetric ``k // 2`` on both sides, as in PyTorch/OFA (XLA's
``'SAME'`` pads asymmetrically for stride 2 on even inputs), which is also what makes a small
kernel zero-padded to a larger one compute exactly the same output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEPTHWISE_IMPLS = ("auto", "xla", "shift")


def hswish(x):
  """Hard swish ``x * relu6(x + 3) / 6`` (MobileNetV3)."""
  return x * jax.nn.relu6(x + 3.0) / 6.0


def hsigmoid(x):
  """Hard sigmoid ``relu6(x + 3) / 6``."""
  return jax.nn.relu6(x + 3.0) / 6.0


ACTIVATIONS = {"relu": jax.nn.relu, "h_swish": hswish, "none": lambda x: x}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation: unknown {name!r} (known: {', '.join(ACTIVATIONS)})")
  return ACTIVATIONS[name]


def resolve_depthwise_impl(impl: str) -> str:
  """``'auto'`` picks k*k shifted multiply-adds on CPU (XLA's grouped conv is ~35x slower
  there) and XLA's convolution elsewhere."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise_impl: {impl!r} is not one of {DEPTHWISE_IMPLS}")
  if impl == "auto":
    return "shift" if jax.default_backend() == "cpu" else "xla"
  return impl


def conv_out_size(size: int, kernel: int, stride: int) -> int:
  """Output side of a conv with symmetric ``kernel // 2`` padding."""
  return (size + 2 * (kernel // 2) - kernel) // stride + 1


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1, impl: str = "auto"):
  """Depthwise 2-D convolution with symmetric padding.

  Args:
    x: ``(N, H, W, C)``.
    kernel: ``(k, k, 1, C)`` (odd ``k``).
    stride: spatial stride.
    impl: ``'xla'`` (``lax.conv_general_dilated`` with ``feature_group_count=C``),
      ``'shift'`` (a scan over the k*k taps of shifted slices times per-channel weights) or
      ``'auto'``.
  Returns:
    ``(N, ceil(H / stride), ceil(W / stride), C)``.
  """
  k = kernel.shape[0]
  p = k // 2
  c = x.shape[-1]
  if resolve_depthwise_impl(impl) == "xla":
    return lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (stride, stride), ((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
  return _depthwise_shift(x, kernel.astype(x.dtype), stride)


def _depthwise_shift(x, kernel, stride):
  """Depthwise conv as a ``lax.scan`` over the k*k taps: acc += tap(x) * kernel[i, j].

  The padded input is split into ``stride**2`` phases (space-to-depth), so every tap is a
  plain ``dynamic_slice`` of one phase.  A scan keeps the traced graph one tap long, which
  keeps compile time of deep networks (and of their gradients) low on CPU.
  """
  k, s = kernel.shape[0], stride
  p = k // 2
  n, h, w, c = x.shape
  ho, wo = conv_out_size(h, k, s), conv_out_size(w, k, s)
  ph, pw = -(-(h + 2 * p) // s), -(-(w + 2 * p) // s)   # phase sides
  xp = jnp.pad(x, ((0, 0), (p, ph * s - h - p), (p, pw * s - w - p), (0, 0)))
  phases = xp.reshape(n, ph, s, pw, s, c).transpose(2, 4, 0, 1, 3, 5).reshape(s * s, n, ph, pw, c)
  taps = kernel.reshape(k * k, c)
  ii, jj = np.divmod(np.arange(k * k), k)

  def tap(acc, t):
    i, j, wt = t
    src = lax.dynamic_index_in_dim(phases, (i % s) * s + (j % s), keepdims=False)
    return acc + lax.dynamic_slice(src, (0, i // s, j // s, 0), (n, ho, wo, c)) * wt, None

  acc, _ = lax.scan(tap, jnp.zeros((n, ho, wo, c), x.dtype), (jnp.asarray(ii), jnp.asarray(jj), taps))
  return acc


def centre_crop(kernel: jax.Array, k: int) -> jax.Array:
  """The central ``k x k`` window of a ``(K, K, ...)`` kernel."""
  start = (kernel.shape[0] - k) // 2
  return kernel[start:start + k, start:start + k]


def pad_kernel(kernel: jax.Array, size: int) -> jax.Array:
  """Zero-pad a ``(k, k, ...)`` kernel to ``(size, size, ...)`` around its centre."""
  p = (size - kernel.shape[0]) // 2
  pads = ((p, p), (p, p)) + ((0, 0),) * (kernel.ndim - 2)
  return jnp.pad(kernel, pads)


def transform_matrix_name(src: int, dst: int) -> str:
  return f"{src}to{dst}_matrix"


def elastic_kernels(kernel: jax.Array, kernel_sizes, matrices=None) -> list[jax.Array]:
  """OFA's elastic kernel: one ``(k, k, 1, C)`` kernel per size in ``kernel_sizes`` (ascending).

  The largest size is ``kernel`` itself.  Each smaller size is the centre crop of the next
  larger *derived* kernel, passed through that step's learned ``(k*k, k*k)`` matrix (shared by
  all channels; OFA applies ``F.linear``, i.e. ``flat @ M.T`` per channel): 7 -> 5 -> 3 chains
  two transforms.  ``matrices=None`` gives plain centre crops (no transform).
  """
  sizes = list(kernel_sizes)
  out = {sizes[-1]: kernel}
  cur = kernel
  for src, dst in zip(sizes[::-1], sizes[-2::-1]):
    crop = centre_crop(cur, dst)
    if matrices is not None:
      m = matrices[transform_matrix_name(src, dst)]
      flat = crop.reshape(dst * dst, -1)                   # taps x channels
      crop = (m.astype(flat.dtype) @ flat).reshape(crop.shape)
    out[dst] = cur = crop
  return [out[k] for k in sizes]


def batch_moments(x: jax.Array, axes=(0, 1, 2)):
  """Per-channel mean and biased variance in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axes)
  var = jnp.mean(jnp.square(x - mean), axes)
  return mean, var
