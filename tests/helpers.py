"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on the path).  The
contract tests' configurations and shared supernet programs are in ``contract.py``."""

import os

import jax

from regnas_jax.spaces import base as _base


def flat(tree):
  """{'path': leaf} of a pytree."""
  return {jax.tree_util.keystr(p): x for p, x in jax.tree.flatten_with_path(tree)[0]}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The packed-JPEG CIFAR-10 file: $REGNAS_CIFAR10_NPZ, else where the project's machines keep it
# (beside the checkout); tests that need it skip when neither exists.
CIFAR10_NPZ = os.environ.get("REGNAS_CIFAR10_NPZ") or os.path.join(
    ROOT, "..", "shared", "data", "cifar10", "cifar10_jpeg.npz")


class ToySpaceBase(_base.SearchSpace):
  """A base for the small spaces of the search-algorithm tests: the parts of the space contract
  an algorithm under test does not call raise.  (Registered spaces implement all of it; the
  contract tests check them.)"""

  def _unused(self, *a, **k):
    raise NotImplementedError(f"{type(self).__name__}: not needed by this test")

  mutate = contains = grow_to_contain = macs = params = num_archs = _unused
  arch_to_dict = arch_from_dict = format = _unused


def packed_npz(path, n_train=12, n_test=5, size=8, seed=0):
  """A small file in the packed JPEG format, plus the decoded images PIL itself produces."""
  import io

  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(seed)
  arrays, decoded = {}, {}
  for split, n in (("train", n_train), ("test", n_test)):
    blobs, imgs = [], []
    for _ in range(n):
      buf = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
      blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
      imgs.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    arrays[f"{split}_jpeg"] = np.concatenate(blobs)
    arrays[f"{split}_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])])
    arrays[f"{split}_labels"] = rng.integers(0, 10, n).astype(np.uint8)
    decoded[split] = np.stack(imgs)
  np.savez(path, **arrays)
  return arrays, decoded
