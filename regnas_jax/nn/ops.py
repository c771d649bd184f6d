"""Pure array functions shared by supernets and exact-shape subnets.

Layout is NHWC throughout; conv kernels are HWIO as in ``flax.linen.Conv`` (a depthwise kernel
is ``(k, k, 1, C)``).  Padding is symmetric ``k // 2`` on both sides, as in PyTorch/OFA (XLA's
``'SAME'`` pads asymmetrically for stride 2 on even inputs), which is also what makes a small
kernel zero-padded to a larger one compute exactly the same output.
"""

from __future__ import annotations

import functools

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


ACTIVATIONS = {"relu": jax.nn.relu, "relu6": jax.nn.relu6, "h_swish": hswish, "none": lambda x: x}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation: unknown {name!r} (known: {', '.join(ACTIVATIONS)})")
  return ACTIVATIONS[name]


# Inside ``conv_form()`` every depthwise conv is traced as XLA's convolution, whatever its
# ``impl``: the same function, in the form whose multiply-adds ``costs.count_macs`` reads off
# the program.  A jit-cache key: a jitted function is traced anew inside it.
_CONV_FORM = jax.make_user_context(False)


def conv_form():
  """Context in which :func:`depthwise_conv` traces XLA's convolution for every ``impl``."""
  return _CONV_FORM(True)


def resolve_depthwise_impl(impl: str) -> str:
  """``'auto'`` picks k*k shifted multiply-adds on CPU (XLA's grouped conv is ~35x slower
  there) and XLA's convolution elsewhere; inside :func:`conv_form`, always XLA's."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise_impl: {impl!r} is not one of {DEPTHWISE_IMPLS}")
  if _CONV_FORM.value:
    return "xla"
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

  Taps more than ``max(H, W) - 1`` pixels off centre read only padding, so on small feature
  maps (e.g. a 7x7 kernel on 2x2) the kernel is centre-cropped first: the same output and
  gradients (zero for the dropped taps), with fewer multiply-adds.
  """
  p_eff = min(kernel.shape[0] // 2, max(x.shape[1], x.shape[2]) - 1)
  if p_eff < kernel.shape[0] // 2:
    kernel = centre_crop(kernel, 2 * p_eff + 1)
  k = kernel.shape[0]
  p = k // 2
  c = x.shape[-1]
  if resolve_depthwise_impl(impl) == "xla":
    return lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (stride, stride), ((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)
  return _depthwise_shift(x, kernel.astype(x.dtype), stride)


def _phases(xp, s):
  """``(N, s*PH, s*PW, C)`` -> ``(s*s, N, PH, PW, C)``: phase (a, b) holds ``xp[:, a::s, b::s]``."""
  n, hp, wp, c = xp.shape
  return xp.reshape(n, hp // s, s, wp // s, s, c).transpose(2, 4, 0, 1, 3, 5).reshape(
      s * s, n, hp // s, wp // s, c)


def _pad_for(x, k, s):
  """Symmetric ``k // 2`` padding, extended at the end to a multiple of ``s``."""
  p = k // 2
  _, h, w, _ = x.shape
  ph, pw = -(-(h + 2 * p) // s), -(-(w + 2 * p) // s)
  return jnp.pad(x, ((0, 0), (p, ph * s - h - p), (p, pw * s - w - p), (0, 0)))


def _tap_scan(phases, kernel, s, ho, wo, body):
  """Scan ``body(acc, tap_slice, tap_weights)`` over the k*k taps of a phase-split input."""
  k = kernel.shape[0]
  _, n, _, _, c = phases.shape
  ii, jj = np.divmod(np.arange(k * k), k)

  def tap(acc, t):
    i, j, wt = t
    src = lax.dynamic_index_in_dim(phases, (i % s) * s + (j % s), keepdims=False)
    return body(acc, lax.dynamic_slice(src, (0, i // s, j // s, 0), (n, ho, wo, c)), wt)

  return lax.scan(tap, None if body is _kgrad_body else jnp.zeros((n, ho, wo, c), phases.dtype),
                  (jnp.asarray(ii), jnp.asarray(jj), kernel.reshape(k * k, c)))


def _mac_body(acc, sl, wt):
  return acc + sl * wt, None


def _kgrad_body(g):
  def body(acc, sl, wt):
    del wt
    return acc, jnp.sum((sl * g).astype(jnp.float32), (0, 1, 2))
  return body


def _shift_forward(x, kernel, stride):
  k, s = kernel.shape[0], stride
  _, h, w, _ = x.shape
  ho, wo = conv_out_size(h, k, s), conv_out_size(w, k, s)
  return _tap_scan(_phases(_pad_for(x, k, s), s), kernel, s, ho, wo, _mac_body)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shift(x, kernel, stride):
  """Depthwise conv as a ``lax.scan`` over the k*k taps: acc += tap(x) * kernel[i, j].

  The padded input is split into ``stride**2`` phases (space-to-depth), so every tap is a
  plain ``dynamic_slice`` of one phase.  A scan keeps the traced graph one tap long, which
  keeps compile time of deep networks (and of their gradients) low on CPU.  The gradient is
  written by hand (below): autodiff of the scan saved all k*k tap slices and accumulated the
  input gradient by dynamic-update-slices, several times slower than the forward pass.
  """
  return _shift_forward(x, kernel, stride)


def _depthwise_shift_fwd(x, kernel, stride):
  return _shift_forward(x, kernel, stride), (x, kernel)


def _depthwise_shift_bwd(s, res, g):
  x, kernel = res
  k, p = kernel.shape[0], kernel.shape[0] // 2
  n, h, w, c = x.shape
  _, ho, wo, _ = g.shape
  # Kernel: dk[i, j] = sum over (n, y, x) of tap_ij(x_pad) * g.
  phases = _phases(_pad_for(x, k, s), s)
  _, dk = _tap_scan(phases, kernel, s, ho, wo, _kgrad_body(g))
  dk = dk.reshape(kernel.shape).astype(kernel.dtype)
  # Input: a stride-1 correlation of the zero-dilated g with the flipped kernel.
  gd = jnp.zeros((n, (ho - 1) * s + 1, (wo - 1) * s + 1, c), g.dtype).at[:, ::s, ::s].set(g)
  hd, wd = gd.shape[1], gd.shape[2]
  # dx[a] = sum_i gd[a + p - i] * K[i]  ->  pad gd so that index a + p - i is always valid.
  gp = jnp.pad(gd, ((0, 0), (k - 1 - p, max(h + p - hd, 0)), (k - 1 - p, max(w + p - wd, 0)),
                    (0, 0)))
  flipped = kernel[::-1, ::-1]
  dx = _tap_scan(gp[None], flipped, 1, h, w, _mac_body)[0]
  return dx.astype(x.dtype), dk


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


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


def avg_pool_ceil(x: jax.Array, stride: int) -> jax.Array:
  """Average pool with kernel = stride over NHWC in "ceil mode" (ResNet-D shortcut).

  Output side ``ceil(H / stride)``; a window cut by the border averages only the pixels it
  covers (PyTorch's ``AvgPool2d(s, s, ceil_mode=True)``, as OFA-ResNet's shortcut uses).
  """
  if stride == 1:
    return x
  n, h, w, c = x.shape
  ph, pw = -h % stride, -w % stride
  ones = np.pad(np.ones((h, w), np.float32), ((0, ph), (0, pw)))
  counts = ones.reshape((h + ph) // stride, stride, (w + pw) // stride, stride).sum((1, 3))
  xs = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
  xs = xs.reshape(n, (h + ph) // stride, stride, (w + pw) // stride, stride, c).sum((2, 4))
  return xs / jnp.asarray(counts, xs.dtype)[None, :, :, None]


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3x3 max pool, stride 2, padding 1 (the ResNet stem's), NHWC; output side ceil(H / 2).

  The init is the Python scalar ``-inf`` so that JAX recognises a max pool, which has a
  gradient (an init array traced as a constant makes a generic reduce_window: no reverse mode).
  """
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))
