"""Counting MACs off traced programs, against hand-computed layer costs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import contract
from regnas_jax import costs
from regnas_jax.nn import layers, ops
from regnas_jax.nn.supernet import build_supernet
from regnas_jax.spaces import SPACES, member


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


def test_elementwise_ops_are_free_and_a_depthwise_conv_counts_in_every_implementation():
  x = jnp.zeros((1, 6, 6, 3))
  assert costs.count_macs(lambda a: jnp.tanh(a) * a + a.mean(), x) == 0
  for impl in ops.DEPTHWISE_IMPLS:
    dw = layers.DepthwiseConv2D(3, 1, impl)
    v = dw.init(jax.random.key(0), x)
    assert costs.count_macs(dw.apply, v, x) == 6 * 6 * 3 * 9, impl
  # the shifted form has no convolution; a jitted one traced (and run) before the count is
  # traced again inside it
  shift = jax.jit(layers.DepthwiseConv2D(3, 1, "shift").apply)
  assert "conv_general_dilated" not in str(jax.make_jaxpr(shift)(v, x))
  shift(v, x)
  assert costs.count_macs(shift, v, x) == 6 * 6 * 3 * 9


@pytest.mark.parametrize("impl", ops.DEPTHWISE_IMPLS)
def test_a_models_counted_macs_are_its_analytic_macs_whatever_the_depthwise_impl(impl):
  """MACs counted off the programs of OFA-MBv3's supernet (max arch, plain centre crops: OFA's
  transform matrices are weight-only products) and of its and MobileNetV3-Like's exact
  subnets equal the spaces' analytic MACs under every depthwise implementation -- the CPU
  default computes depthwise convs as shifted multiply-adds.  128 px: no kernel is cropped to
  a small feature map.  Shapes only: nothing runs."""
  x = jax.ShapeDtypeStruct((1, 128, 128, 3), jnp.float32)
  for name in ("ofa_mbv3", "mobilenet_v3_like"):
    c = contract.config(name)
    sp = SPACES[name](**{**c.space, "resolutions": (128,)})
    net = build_supernet(sp, **{**c.supernet, "depthwise_impl": impl})
    shapes = contract.shapes(name)
    for a in (sp.max_arch(), member(contract.population(sp, 5), 4)):
      module = net.exact_module(a)
      sv = jax.eval_shape(lambda v, a=a: net.extract(v, a)[1], shapes)
      assert costs.count_macs(lambda v, x, m=module: m.apply(v, x), sv, x) == sp.macs(a), name
  sp = SPACES["ofa_mbv3"](**{**contract.config("ofa_mbv3").space, "resolutions": (128,)})
  net = build_supernet(sp, depthwise_impl=impl, kernel_transform=False)
  counted = costs.count_macs(lambda v, x: net.apply(v, x, sp.max_arch()),
                             contract.shapes("ofa_mbv3", True), x)
  assert counted == sp.macs(sp.max_arch())


def test_while_loop_with_macs_is_rejected():
  w = jnp.zeros((3, 3))
  f = lambda x: jax.lax.while_loop(lambda c: c[0, 0] < 1, lambda c: c @ w, x)
  with pytest.raises(NotImplementedError, match="unknown trip count"):
    costs.count_macs(f, jnp.zeros((3, 3)))
