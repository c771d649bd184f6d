"""Elastic layers against their plain Flax counterparts on the sliced shapes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.nn import layers


@pytest.mark.parametrize("train", [True, False])
def test_masked_batchnorm_equals_flax_batchnorm_on_active_channels(train):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.0, 2.0, size=(4, 5, 5, 12)), jnp.float32)
  c = 7
  mask = jnp.arange(12) < c
  full = layers.MaskedBatchNorm()
  v = full.init(jax.random.key(0), x, False)
  v = {"params": {"scale": jnp.asarray(rng.normal(size=12), jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=12), jnp.float32)},
       "batch_stats": {"mean": jnp.asarray(rng.normal(size=12), jnp.float32),
                       "var": jnp.asarray(rng.uniform(0.5, 2, size=12), jnp.float32)}}
  xm = x * mask  # what a masked supernet feeds it: inactive channels are zero
  y, upd = full.apply(v, xm, train, mask, mutable=["batch_stats"])
  ref_mod = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
  sliced = jax.tree.map(lambda a: a[:c], v)
  ref, ref_upd = ref_mod.apply(sliced, x[..., :c], mutable=["batch_stats"])
  np.testing.assert_allclose(np.asarray(y[..., :c]), np.asarray(ref), rtol=1e-4, atol=1e-4)
  assert np.all(np.asarray(y[..., c:]) == 0)
  for k in ("mean", "var"):
    np.testing.assert_allclose(np.asarray(upd["batch_stats"][k][:c]),
                               np.asarray(ref_upd["batch_stats"][k]), rtol=1e-5, atol=1e-6)
    # inactive channels keep their statistics
    np.testing.assert_array_equal(np.asarray(upd["batch_stats"][k][c:]),
                                  np.asarray(v["batch_stats"][k][c:]))
  if train:
    _, frozen = full.apply(v, xm, True, mask, False, mutable=["batch_stats"])
    for k in ("mean", "var"):
      np.testing.assert_array_equal(np.asarray(frozen["batch_stats"][k]),
                                    np.asarray(v["batch_stats"][k]))


def test_elastic_depthwise_selects_derived_kernel_per_index():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 6)), jnp.float32)
  mod = layers.ElasticDepthwiseConv2D((3, 5, 7), strides=2, impl="shift")
  v = mod.init(jax.random.key(0), x, 2)
  v = jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape), jnp.float32), v)
  p = v["params"]
  from regnas_jax.nn import ops
  derived = ops.elastic_kernels(p["kernel"], (3, 5, 7),
                                {"7to5_matrix": p["7to5_matrix"], "5to3_matrix": p["5to3_matrix"]})
  outs = jax.vmap(lambda i: mod.apply(v, x, i))(jnp.arange(3))
  # switch mode: lax.switch over the sizes, each at its own size (one index at a time)
  switched = jax.lax.map(lambda i: mod.clone(switch=True).apply(v, x, i), jnp.arange(3))
  for i, k in enumerate(derived):
    ref = layers.DepthwiseConv2D(k.shape[0], 2, "xla").apply({"params": {"kernel": k}}, x)
    np.testing.assert_allclose(np.asarray(outs[i]), np.asarray(ref), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(switched[i]), np.asarray(ref), rtol=1e-4, atol=1e-4)
  assert p["7to5_matrix"].shape == (25, 25) and p["5to3_matrix"].shape == (9, 9)
  fresh = mod.init(jax.random.key(0), x, 2)["params"]
  np.testing.assert_array_equal(np.asarray(fresh["7to5_matrix"]), np.eye(25))


def test_squeeze_excite_hidden_mask_equals_smaller_se():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(3, 4, 4, 16)), jnp.float32)
  x = x * (jnp.arange(16) < 10)
  big = layers.SqueezeExcite(8)
  v = big.init(jax.random.key(0), x)
  v = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), v)
  y = big.apply(v, x, jnp.arange(8) < 5)
  small = {"params": {"reduce": {"kernel": v["params"]["reduce"]["kernel"][:10, :5],
                                 "bias": v["params"]["reduce"]["bias"][:5]},
                      "expand": {"kernel": v["params"]["expand"]["kernel"][:5, :10],
                                 "bias": v["params"]["expand"]["bias"][:10]}}}
  ref = layers.SqueezeExcite(5).apply(small, x[..., :10])
  np.testing.assert_allclose(np.asarray(y[..., :10]), np.asarray(ref), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(y[..., 10:]) == 0)
