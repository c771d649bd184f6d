"""Regression metrics of subnets from per-sample correctness (pure numpy).

``correct`` arrays are bool ``(..., N)``: which of the N samples of a split a model classifies
correctly.  Top-1 is their mean; the negative flip rate NFR(new, old) is the share of all
samples the old model gets right and the new one gets wrong (Yan et al., CVPR 2021, as used by
REG-NAS); relative NFR divides it by what independent errors would give.
"""

from __future__ import annotations

import numpy as np


def top1(correct) -> np.ndarray:
  """Accuracy per member: the mean of bool ``correct`` ``(..., N)`` over samples."""
  return np.asarray(correct, bool).mean(-1)


def nfr(new_correct, old_correct) -> np.ndarray:
  """Negative flip rate NFR(new, old): the fraction of *all* N samples that the old model gets
  right and the new one gets wrong (Yan et al., CVPR 2021, as used by REG-NAS).

  Bool ``(..., N)`` inputs broadcast against each other.
  """
  new, old = np.asarray(new_correct, bool), np.asarray(old_correct, bool)
  return (old & ~new).mean(-1)


def relative_nfr(new_correct, old_correct) -> np.ndarray:
  """NFR divided by the NFR expected if the two models erred independently,
  ``acc_old * (1 - acc_new)``; ``nan`` where that product is 0."""
  expected = top1(old_correct) * (1.0 - top1(new_correct))
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(expected > 0, nfr(new_correct, old_correct) / np.where(expected > 0, expected, 1),
                    np.nan)


def nfr_matrix(correct) -> np.ndarray:
  """``(k, k)`` pairwise NFR of a family: entry ``[i, j]`` = NFR(new=j, old=i), i.e. the
  fraction of samples member ``i`` gets right and member ``j`` gets wrong (diagonal 0).

  For a family ordered small to large the upper triangle holds the regressions that matter.
  """
  c = np.asarray(correct, bool)
  return (c[:, None, :] & ~c[None, :, :]).mean(-1)
