"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on the path).  The
contract tests' configurations and shared supernet programs are in ``contract.py``."""

import jax

from regnas_jax.spaces import base as _base


def flat(tree):
  """{'path': leaf} of a pytree."""
  return {jax.tree_util.keystr(p): x for p, x in jax.tree.flatten_with_path(tree)[0]}


class ToySpaceBase(_base.SearchSpace):
  """A base for the small spaces of the search-algorithm tests: the parts of the space contract
  an algorithm under test does not call raise.  (Registered spaces implement all of it; the
  contract tests check them.)"""

  def _unused(self, *a, **k):
    raise NotImplementedError(f"{type(self).__name__}: not needed by this test")

  mutate = contains = grow_to_contain = macs = params = num_archs = _unused
  to_json = from_json = format = _unused
