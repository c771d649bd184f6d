"""regnas-jax: regression-free neural architecture search in JAX/Flax.

Layers (each imports only those above it in this list; ``tests/test_import_layering.py`` checks
it):

  errors, defaults, identity   the error types; default config sections; what saved state
            depends on and the comparison of saved identities (no JAX)
  spaces    architectures as small integer pytrees: sampling, variation, inclusion, costs, JSON
  persist, stopping, progress, metrics   state files and the work-dir lock; SIGTERM; progress
            lines and metrics.jsonl; Top-1 and negative flip rates
  nn        masked supernets over one parameter tree (the Supernet contract), exact subnets
  data, costs, latency, latency_tunas, checkpoint   datasets; MACs counted off programs; latency
            models (fitted here; TuNAS's released Pixel-1 models); orbax
  evaluate, training, search, export, io   scoring populations; the resumable training loop,
            supernet and exact-network training; search algorithms; saved subnets; OFA weights
  report    tables and plots
  jobs      the Job contract and the family, NSGA-II and TuNAS jobs
  cli, experiments   the ``regnas-search`` command; REG-NAS's tables

``import regnas_jax as rj`` is light (no JAX): each subpackage is imported on first use, so
``rj.spaces``, ``rj.nn``, ``rj.search``, ``rj.export``, ... work without importing them first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Subpackages and modules reachable as attributes of the package, imported on first access.
_LAZY = ("costs", "data", "errors", "evaluate", "experiments", "export", "jobs", "latency",
         "latency_tunas", "metrics", "nn", "report", "search", "spaces", "training")

__all__ = list(_LAZY)

if TYPE_CHECKING:  # what static checkers see of the lazy attributes
  from regnas_jax import (costs, data, errors, evaluate, experiments, export, jobs, latency,
                          latency_tunas, metrics, nn, report, search, spaces, training)


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
