"""Helpers shared by the supernet tests (imported as ``helpers``: pytest puts tests/ on the path)."""

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax.spaces import member, stack


def randomize(variables, seed):
  """Perturb every parameter (BN affine, transform matrices, biases) away from its init."""
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree.flatten_with_path(variables["params"])
  out = []
  for path, x in leaves:
    name = jax.tree_util.keystr(path)
    noise = rng.normal(size=x.shape).astype(np.float32)
    if "matrix" in name:
      x = x + 0.15 * noise
    elif "scale" in name:
      x = 1.0 + 0.3 * noise
    elif "bias" in name:
      x = 0.2 * noise
    else:
      x = x * (1.0 + 0.1 * noise)
    out.append(jnp.asarray(x))
  return dict(variables, params=jax.tree.unflatten(tree, out))


def floor_variances(stats, add=0.5):
  """Running statistics with every variance raised by ``add`` (well-conditioned eval BN)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x + add if jax.tree_util.keystr(p).endswith("['var']") else x, stats)


def archs_for(sp, n, seed=0):
  """min, max and n random archs of ``sp`` as one population."""
  pop = sp.sample(jax.random.key(seed), n)
  return stack([sp.min_arch(), sp.max_arch()] + [member(pop, i) for i in range(n)])


def exact_run(module, v, x):
  """Eval logits, train logits and updated statistics of an exact subnet, run op by op: every
  subnet has other shapes, and op-by-op dispatch reuses compiled ops across subnets."""
  ev = module.apply(v, x, train=False)
  tr, upd = module.apply(v, x, train=True, mutable=["batch_stats"])
  return ev, tr, upd["batch_stats"]


def assert_close(a, b, rtol=1e-4):
  a, b = np.asarray(a), np.asarray(b)
  scale = max(np.abs(b).max(), 1e-6)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def flat(tree):
  """{'path': leaf} of a pytree."""
  return {jax.tree_util.keystr(p): x for p, x in jax.tree.flatten_with_path(tree)[0]}


from regnas_jax.spaces import base as _base


class ToySpaceBase(_base.SearchSpace):
  """A base for the small spaces of the search-algorithm tests: the parts of the space contract
  an algorithm under test does not call raise.  (Registered spaces implement all of it; the
  contract tests check them.)"""

  def _unused(self, *a, **k):
    raise NotImplementedError(f"{type(self).__name__}: not needed by this test")

  mutate = contains = grow_to_contain = macs = params = num_archs = _unused
  to_json = from_json = format = _unused
