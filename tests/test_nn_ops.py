"""Pure ops: depthwise conv implementations, elastic kernels, activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.nn import ops


def naive_depthwise(x, kernel, stride):
  """Direct loops, PyTorch-style symmetric padding k // 2."""
  n, h, w, c = x.shape
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  out = np.zeros((n, ho, wo, c))
  for i in range(ho):
    for j in range(wo):
      win = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j, :] = np.einsum("nabc,abc->nc", win, kernel[:, :, 0, :])
  return out


@pytest.mark.parametrize("impl", ["xla", "shift"])
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("stride, size", [(1, 6), (1, 7), (2, 8), (2, 9), (2, 5)])
def test_depthwise_matches_naive(impl, k, stride, size):
  rng = np.random.default_rng(k * 10 + size)
  x = rng.normal(size=(2, size, size + 1, 5)).astype(np.float32)
  w = rng.normal(size=(k, k, 1, 5)).astype(np.float32)
  got = jax.jit(ops.depthwise_conv, static_argnums=(2, 3))(x, w, stride, impl)
  np.testing.assert_allclose(np.asarray(got), naive_depthwise(x, w, stride), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_zero_padded_small_kernel_equals_small_conv(stride):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 9, 9, 4)).astype(np.float32)
  w3 = rng.normal(size=(3, 3, 1, 4)).astype(np.float32)
  a = ops.depthwise_conv(x, ops.pad_kernel(jnp.asarray(w3), 7), stride, "shift")
  b = ops.depthwise_conv(x, w3, stride, "xla")
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_depthwise_vmaps_over_kernels_and_grads_agree():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(3, 8, 8, 4)), jnp.float32)
  ws = jnp.asarray(rng.normal(size=(5, 7, 7, 1, 4)), jnp.float32)
  f = lambda impl: jax.vmap(lambda w: ops.depthwise_conv(x, w, 2, impl))(ws)
  np.testing.assert_allclose(np.asarray(f("shift")), np.asarray(f("xla")), rtol=1e-5, atol=1e-5)
  g = lambda impl: jax.grad(lambda x, w: jnp.sum(jnp.sin(ops.depthwise_conv(x, w, 2, impl))),
                            argnums=(0, 1))(x, ws[0])
  for a, b in zip(g("shift"), g("xla")):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_depthwise_impl_resolution():
  assert ops.resolve_depthwise_impl("auto") == ("shift" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="depthwise_impl: 'cudnn' is not one of"):
    ops.resolve_depthwise_impl("cudnn")


def ofa_chain_numpy(w7, m75, m53):
  """OFA's get_active_filter for k=5 and k=3, channels-first, with F.linear = x @ M.T."""
  wt = np.transpose(w7[:, :, 0, :], (2, 0, 1))               # (C, 7, 7)
  c = wt.shape[0]
  k5 = (wt[:, 1:6, 1:6].reshape(c, 25) @ m75.T).reshape(c, 5, 5)
  k3 = (k5[:, 1:4, 1:4].reshape(c, 9) @ m53.T).reshape(c, 3, 3)
  back = lambda k: np.transpose(k, (1, 2, 0))[:, :, None, :]
  return back(k3), back(k5)


def test_elastic_kernels_follow_ofa_transform_chain():
  rng = np.random.default_rng(2)
  w7 = rng.normal(size=(7, 7, 1, 6)).astype(np.float32)
  m75 = rng.normal(size=(25, 25)).astype(np.float32)
  m53 = rng.normal(size=(9, 9)).astype(np.float32)
  k3, k5, k7 = ops.elastic_kernels(jnp.asarray(w7), (3, 5, 7),
                                   {"7to5_matrix": m75, "5to3_matrix": m53})
  r3, r5 = ofa_chain_numpy(w7, m75, m53)
  np.testing.assert_allclose(np.asarray(k5), r5, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(k3), r3, rtol=1e-4, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(k7), w7)
  # Without transforms a smaller kernel is literally the centre of the larger one.
  p3, p5, _ = ops.elastic_kernels(jnp.asarray(w7), (3, 5, 7))
  np.testing.assert_array_equal(np.asarray(p5), w7[1:6, 1:6])
  np.testing.assert_array_equal(np.asarray(p3), w7[2:5, 2:5])


def test_activations():
  x = jnp.linspace(-5, 5, 101)
  np.testing.assert_allclose(ops.hswish(x), np.asarray(x) * np.clip(np.asarray(x) + 3, 0, 6) / 6, atol=1e-6)
  np.testing.assert_allclose(ops.hsigmoid(x), np.clip(np.asarray(x) + 3, 0, 6) / 6, atol=1e-6)
  assert float(ops.hswish(jnp.zeros(()))) == 0.0
  with pytest.raises(ValueError, match="unknown 'gelu'"):
    ops.activation("gelu")


@pytest.mark.parametrize("h, w, s", [(7, 5, 2), (8, 8, 2), (9, 4, 3), (5, 5, 1)])
def test_avg_pool_ceil_matches_a_loop(h, w, s):
  """PyTorch's AvgPool2d(s, s, ceil_mode=True): windows cut by the border average what they cover."""
  x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
  want = np.zeros((2, -(-h // s), -(-w // s), 3), np.float32)
  for i in range(want.shape[1]):
    for j in range(want.shape[2]):
      want[:, i, j] = x[:, i * s:(i + 1) * s, j * s:(j + 1) * s].mean((1, 2))
  np.testing.assert_allclose(ops.avg_pool_ceil(jnp.asarray(x), s), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("h", [7, 8])
def test_max_pool_matches_a_loop(h):
  x = np.random.default_rng(1).normal(size=(1, h, h, 2)).astype(np.float32)
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  n = (h - 1) // 2 + 1
  want = np.array([[p[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max((1, 2)) for j in range(n)]
                   for i in range(n)]).transpose(2, 0, 1, 3)
  np.testing.assert_array_equal(ops.max_pool_3x3_s2(jnp.asarray(x)), want)
  # gradient of sum(pool(x)): each pixel counts the windows whose maximum it is (no ties)
  idx = np.arange(x.size).reshape(x.shape).astype(np.float32)
  pi = np.pad(idx, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-1)
  counts = np.zeros(x.size)
  for i in range(n):
    for j in range(n):
      win_x = p[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(-1, 9, 2)
      win_i = pi[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(-1, 9, 2)
      for c in range(2):
        counts[int(win_i[0, win_x[0, :, c].argmax(), c])] += 1
  g = jax.grad(lambda x: ops.max_pool_3x3_s2(x).sum())(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(g).ravel(), counts)
