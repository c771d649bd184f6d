"""REG-NAS search reward ``lambda1 * Top1(a) - lambda2 * NFR(a, a_ref)`` (Duggal et al., ECCV 2022).

Presets as the paper names them: R0 = (1, 0) accuracy only, R1 = (0, 1) negative flips only,
R2 = (1, 1) both (the paper's choice after sweeping lambda2/lambda1 over [0.05, 20]).  Top-1
and NFR are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np

PRESETS = {"R0": (1.0, 0.0), "R1": (0.0, 1.0), "R2": (1.0, 1.0)}


def parse_reward(spec) -> tuple[float, float]:
  """``(lambda1, lambda2)`` from a preset name (``'R2'``), a pair, or a string ``'1,0.5'``."""
  if isinstance(spec, str):
    s = spec.strip()
    if s.upper() in PRESETS:
      return PRESETS[s.upper()]
    parts = s.replace("(", "").replace(")", "").split(",")
  else:
    parts = list(spec) if isinstance(spec, (list, tuple)) else [spec]
  try:
    if len(parts) != 2:
      raise ValueError
    l1, l2 = (float(p) for p in parts)
  except (TypeError, ValueError):
    raise ValueError(f"reward {spec!r}: use one of {', '.join(PRESETS)} or a pair "
                     f"'lambda1,lambda2'") from None
  if not (np.isfinite(l1) and np.isfinite(l2)) or l1 < 0 or l2 < 0 or l1 == l2 == 0:
    raise ValueError(f"reward {spec!r}: lambdas must be finite, >= 0 and not both 0")
  return l1, l2


def reward(top1, nfr, lambdas) -> np.ndarray:
  """``lambda1 * top1 - lambda2 * nfr`` (arrays broadcast)."""
  l1, l2 = lambdas
  return l1 * np.asarray(top1, np.float64) - l2 * np.asarray(nfr, np.float64)


def name(lambdas) -> str:
  """Preset name of a lambda pair, else ``'l1,l2'``."""
  for k, v in PRESETS.items():
    if tuple(map(float, lambdas)) == v:
      return k
  return f"{lambdas[0]:g},{lambdas[1]:g}"
