"""regnas-jax: regression-free neural architecture search in JAX/Flax.

Layers (each imports only those below it in this list):

  spaces    architectures as small integer pytrees: sampling, variation, inclusion, costs, JSON
  nn        masked supernets over one parameter tree, exact-shape subnets, extraction
  costs     MACs and parameters counted off traced programs
  data      datasets (digits, CIFAR-10 packed JPEG, tfds) and the on-device batch pipeline
  evaluate  BN re-calibration and scoring of populations with one compiled call
  checkpoint, progress   orbax checkpoints with clear errors; progress bars, JSON-lines logs
  train     supernet training: vmapped multi-subnet steps, sandwich rule, progressive shrinking
  search    rewards, constraints, evolution, NSGA-II, family search, TuNAS's policy
  export    extracted subnets saved and loaded on their own
  pipeline  the job behind the ``regnas-search`` command (``cli``)

``import regnas_jax as rj`` is light (no JAX): each subpackage is imported on first use, so
``rj.spaces``, ``rj.nn``, ``rj.search``, ``rj.export``, ... work without importing them first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Subpackages and modules reachable as attributes of the package, imported on first access.
_LAZY = ("costs", "data", "errors", "evaluate", "export", "jobs", "latency", "nn", "report",
         "search", "spaces")

__all__ = [n for n in _LAZY if n != "jobs"]   # jobs: once regnas_jax/jobs/ exists

if TYPE_CHECKING:  # what static checkers see of the lazy attributes
  from regnas_jax import (costs, data, errors, evaluate, export, latency, nn, report, search,
                          spaces)


def __getattr__(name: str):
  if name in _LAZY:
    try:
      return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
      if e.name != f"{__name__}.{name}":
        raise
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_LAZY))
