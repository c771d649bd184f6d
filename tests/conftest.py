"""Shared fixtures: a tiny OFA-MobileNetV3 supernet that compiles quickly on CPU."""

import jax
import pytest

from regnas_jax.nn import OFAMobileNetV3
from regnas_jax.nn.common import init_variables
from regnas_jax.spaces import OFAMobileNetV3Space


@pytest.fixture(scope="session")
def tiny():
  """(space, supernet, variables, images): width 0.5, small stem, 12 px, 10 classes."""
  sp = OFAMobileNetV3Space(width_mult=0.5, stem="small", num_classes=10, resolutions=(12,))
  net = OFAMobileNetV3(sp)
  v = init_variables(net, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 12, 12, 3))
  return sp, net, v, x
