"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/<name>.py``)."""

import statistics
import time

import jax


def timed(fn, repeats):
  """Median wall time of ``repeats`` calls of an already compiled ``fn``."""
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t)
  return statistics.median(out)
