"""Helpers shared by the benchmark scripts (run them as ``python benchmarks/<name>.py``)."""

import statistics
import time

import jax

from regnas_jax import spaces
from regnas_jax.nn import OFAMobileNetV3, OFAResNet50
from regnas_jax.nn.supernet import build_supernet


def timed(fn, repeats):
  """Median wall time of ``repeats`` calls of an already compiled ``fn``."""
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t)
  return statistics.median(out)


def build_net(a, dtype):
  """(space, supernet) from the common benchmark flags --space/--width/--stem/--classes/
  --resolution/--depthwise."""
  sp = spaces.get_space(a.space, width_mult=a.width, stem=a.stem, num_classes=a.classes,
                        resolutions=(a.resolution,))
  if a.space == "ofa_mbv3":
    return sp, OFAMobileNetV3(sp, depthwise_impl=a.depthwise, dtype=dtype)
  if a.space == "ofa_resnet50":
    return sp, OFAResNet50(sp, dtype=dtype)  # no depthwise convolutions
  return sp, build_supernet(sp, depthwise_impl=a.depthwise, dtype=dtype)


def describe_depthwise(a) -> str:
  return f", depthwise {a.depthwise}" if a.space != "ofa_resnet50" else ""
