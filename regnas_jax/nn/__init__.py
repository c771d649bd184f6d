"""Supernets (masked, one shared parameter tree) and exact-shape subnets, as Flax Linen modules.

``build_supernet(space, **options)`` returns the supernet module registered for a space.
"""

from regnas_jax.nn import layers, ops
from regnas_jax.nn.common import init_variables
from regnas_jax.nn.ofa_mbv3 import (MBConvSpec, MobileNetV3, OFAMobileNetV3, exact_module, extract,
                                    reorder_channels, subnet_specs)
from regnas_jax.spaces import OFAMobileNetV3Space, SearchSpace

SUPERNETS = {OFAMobileNetV3Space.name: OFAMobileNetV3}


def build_supernet(space: SearchSpace, **options):
  """The supernet module for ``space`` (options: depthwise_impl, kernel_transform, dtype, ...)."""
  if space.name not in SUPERNETS:
    raise ValueError(f"no supernet registered for space {space.name!r}")
  return SUPERNETS[space.name](space, **options)


__all__ = ["MBConvSpec", "MobileNetV3", "OFAMobileNetV3", "SUPERNETS", "build_supernet",
           "exact_module", "extract", "init_variables", "layers", "ops", "reorder_channels", "subnet_specs"]
