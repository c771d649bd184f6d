"""Supernets (masked, one shared parameter tree) and exact-shape subnets, as Flax Linen modules.

``build_supernet(space, **options)`` returns the supernet module registered for a space;
``extract``, ``exact_module`` and ``reorder_channels`` dispatch on the supernet's type.
"""

from regnas_jax.nn import layers, ofa_mbv3, ofa_resnet50, ops, scarlet, tunas
from regnas_jax.nn.common import init_variables
from regnas_jax.nn.ofa_mbv3 import MBConvSpec, MobileNetV3, OFAMobileNetV3
from regnas_jax.nn.ofa_resnet50 import BottleneckSpec, OFAResNet50, ResNet
from regnas_jax.nn.scarlet import ScarletNet, ScarletSupernet
from regnas_jax.nn.tunas import TunasNet, TunasSupernet
from regnas_jax.spaces import (MobileNetV3LikeSpace, OFAMobileNetV3Space, OFAResNet50Space,
                               ProxylessNASEnlargedSpace, ProxylessNASSpace, ScarletS1Space,
                               ScarletS2Space, SearchSpace)

SUPERNETS = {OFAMobileNetV3Space.name: OFAMobileNetV3, OFAResNet50Space.name: OFAResNet50,
             ScarletS1Space.name: ScarletSupernet, ScarletS2Space.name: ScarletSupernet,
             ProxylessNASSpace.name: TunasSupernet, ProxylessNASEnlargedSpace.name: TunasSupernet,
             MobileNetV3LikeSpace.name: TunasSupernet}
# The module implementing each supernet type.
_IMPL = {OFAMobileNetV3: ofa_mbv3, OFAResNet50: ofa_resnet50, ScarletSupernet: scarlet,
         TunasSupernet: tunas}


def build_supernet(space: SearchSpace, **options):
  """The supernet module for ``space`` (options: its dataclass fields, e.g. dtype,
  dropout_rate; depthwise_impl and kernel_transform for MobileNetV3)."""
  if space.name not in SUPERNETS:
    raise ValueError(f"no supernet registered for space {space.name!r}")
  return SUPERNETS[space.name](space, **options)


def _impl(model):
  if type(model) not in _IMPL:
    raise TypeError(f"not a registered supernet: {type(model).__name__}")
  return _IMPL[type(model)]


def extract(model, variables, arch):
  """``(exact_module, exact_variables)`` of one subnet of ``model`` (see the supernet's module)."""
  return _impl(model).extract(model, variables, arch)


def exact_module(model, arch):
  """The standalone exact-shape module of one subnet (no variables)."""
  return _impl(model).exact_module(model, arch)


def subnet_specs(space, arch):
  """Exact block shapes of one subnet of ``space``."""
  if space.name not in SUPERNETS:
    raise ValueError(f"no supernet registered for space {space.name!r}")
  return _IMPL[SUPERNETS[space.name]].subnet_specs(space, arch)


def reorder_channels(model, variables, keep_expands=(), **kw):
  """Function-preserving channel sorting by importance (see the supernet's module)."""
  return _impl(model).reorder_channels(model, variables, keep_expands, **kw)


__all__ = ["BottleneckSpec", "MBConvSpec", "MobileNetV3", "OFAMobileNetV3", "OFAResNet50",
           "ResNet", "SUPERNETS", "ScarletNet", "ScarletSupernet", "TunasNet", "TunasSupernet", "build_supernet",
           "exact_module", "extract", "init_variables", "layers", "ops", "reorder_channels",
           "subnet_specs"]
