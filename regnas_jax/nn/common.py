"""Helpers shared by every supernet."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Initialisation is random-number generation only (the forward pass is dead code after
# tracing), and XLA's optimisation passes over a few hundred RNG calls cost more than they
# save: compile it unoptimised (about half the compile time on CPU).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def init_variables(model, key: jax.Array, resolution: int | None = None, batch: int = 1):
  """Variables of a supernet module (``model.space`` gives the shapes).

  Args:
    model: a supernet module, e.g. ``OFAMobileNetV3(space)``.
    key: PRNG key.  A traced one (``jax.eval_shape(lambda k: init_variables(net, k), key)``,
      as orbax's abstract restore does) gives the abstract variables: traced, nothing compiled.
    resolution: input side used to trace shapes (default: the space's largest resolution;
      parameters do not depend on it).
    batch: batch size used to trace shapes.
  Returns:
    ``{'params': ..., 'batch_stats': ...}`` for the largest network.
  """
  sp = model.space
  r = max(sp.resolutions) if resolution is None else resolution
  images = jnp.zeros((batch, r, r, 3), jnp.float32)
  arch = sp.at_resolution(sp.max_arch(), r)
  if isinstance(key, jax.core.Tracer):
    return model.init(key, images, arch)
  compiled = jax.jit(model.init).lower(key, images, arch).compile(compiler_options=_FAST_COMPILE)
  return compiled(key, images, arch)


def bn_slice(tree, n: int):
  """The first ``n`` channels of every BN leaf (``scale``/``bias`` or ``mean``/``var``)."""
  return {k: v[..., :n] for k, v in tree.items()}


def se_slice(se, channels: int, hidden: int) -> dict:
  """A squeeze-excite's variables (``reduce``/``expand`` dense layers) sliced to its first
  ``channels`` inputs/outputs and first ``hidden`` hidden units."""
  red, exp = se["reduce"], se["expand"]
  return {"reduce": {"kernel": red["kernel"][:channels, :hidden], "bias": red["bias"][:hidden]},
          "expand": {"kernel": exp["kernel"][:hidden, :channels], "bias": exp["bias"][:channels]}}


def segment_order(importance, boundaries):
  """Permutation sorting channels by descending importance within nested segments.

  ``boundaries`` are channel counts (ascending) whose first-N sets must be kept: a channel
  never crosses one, so every kept width keeps the same channel set (OFA's offsets by
  ``expand_ratio_stage``).
  """
  idx = jnp.arange(importance.shape[0])
  seg = sum((idx >= b).astype(jnp.int32) for b in boundaries) if boundaries else jnp.zeros_like(idx)
  return jnp.lexsort((-importance, seg))
