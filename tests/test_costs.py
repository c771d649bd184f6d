"""Counting MACs off traced programs, against hand-computed layer costs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from regnas_jax import costs
from regnas_jax.nn import layers


def test_conv_dense_and_grouped_conv():
  x = jnp.zeros((1, 10, 10, 8))
  conv = nn.Conv(16, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=True)
  v = conv.init(jax.random.key(0), x)
  assert costs.count_macs(conv.apply, v, x) == 5 * 5 * 16 * 8 * 9       # bias is free
  dw = layers.DepthwiseConv2D(5, 1, "xla")
  v = dw.init(jax.random.key(0), x)
  assert costs.count_macs(dw.apply, v, x) == 10 * 10 * 8 * 25
  dense = nn.Dense(7)
  z = jnp.zeros((3, 11))
  v = dense.init(jax.random.key(0), z)
  assert costs.count_macs(dense.apply, v, z) == 3 * 11 * 7
  assert costs.count_params(v) == 11 * 7 + 7


def test_nested_jit_scan_and_cond():
  w = jnp.zeros((4, 4))

  @jax.jit
  def inner(x):
    return x @ w

  def f(x):
    y, _ = jax.lax.scan(lambda c, _: (inner(c), None), x, None, length=5)
    return jax.lax.cond(True, lambda y: y @ w, lambda y: y, y)

  assert costs.count_macs(f, jnp.zeros((2, 4))) == 5 * 2 * 4 * 4 + 2 * 4 * 4


def test_elementwise_and_shift_depthwise_are_free():
  x = jnp.zeros((1, 6, 6, 3))
  dw = layers.DepthwiseConv2D(3, 1, "shift")
  v = dw.init(jax.random.key(0), x)
  assert costs.count_macs(dw.apply, v, x) == 0
  assert costs.count_macs(lambda a: jnp.tanh(a) * a + a.mean(), x) == 0


def test_while_loop_with_macs_is_rejected():
  w = jnp.zeros((3, 3))
  f = lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 1, lambda c: c @ w, x)
  with pytest.raises(NotImplementedError, match="unknown trip count"):
    costs.count_macs(f, jnp.zeros((3, 3)))
