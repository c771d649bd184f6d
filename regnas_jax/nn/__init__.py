"""Supernets (masked, one shared parameter tree) and exact-shape subnets, as Flax Linen modules.

``ops`` (pure array functions) -> ``layers`` (Linen layers, elastic and plain) -> ``blocks`` (the
inverted-bottleneck block and the classifier head the supernets share) -> one module per
supernet (``ofa_mbv3``, ``ofa_resnet50``, ``scarlet``, ``tunas``) with its exact twin.

The contract a supernet fulfils is :class:`supernet.Supernet`; ``build_supernet(space, **options)``
returns the supernet registered for a space.  ``extract``, ``exact_module``, ``subnet_specs``
and ``reorder_channels`` below are the contract's methods as functions.
"""

from regnas_jax.nn import blocks, layers, ofa_mbv3, ofa_resnet50, ops, scarlet, supernet, tunas
from regnas_jax.nn.blocks import IBN, ElasticIBN, Head, IBNSpec
from regnas_jax.nn.common import init_variables
from regnas_jax.nn.ofa_mbv3 import MobileNetV3, OFAMobileNetV3
from regnas_jax.nn.ofa_resnet50 import BottleneckSpec, OFAResNet50, ResNet
from regnas_jax.nn.scarlet import ScarletNet, ScarletSupernet
from regnas_jax.nn.supernet import SUPERNETS, Supernet, build_supernet, register_supernet
from regnas_jax.nn.tunas import TunasNet, TunasSupernet
from regnas_jax.spaces import (MobileNetV3LikeSpace, OFAMobileNetV3Space, OFAResNet50Space,
                               ProxylessNASEnlargedSpace, ProxylessNASSpace, ScarletS1Space,
                               ScarletS2Space)

for _space, _cls in ((OFAMobileNetV3Space, OFAMobileNetV3), (OFAResNet50Space, OFAResNet50),
                     (ScarletS1Space, ScarletSupernet), (ScarletS2Space, ScarletSupernet),
                     (ProxylessNASSpace, TunasSupernet), (ProxylessNASEnlargedSpace, TunasSupernet),
                     (MobileNetV3LikeSpace, TunasSupernet)):
  register_supernet(_space.name, _cls)


def extract(model, variables, arch):
  """``(exact_module, exact_variables)`` of one subnet of ``model``."""
  return model.extract(variables, arch)


def exact_module(model, arch):
  """The standalone exact-shape module of one subnet (no variables)."""
  return model.exact_module(arch)


def subnet_specs(space, arch):
  """Exact block shapes of one subnet of ``space``."""
  if space.name not in SUPERNETS:
    raise ValueError(f"no supernet registered for space {space.name!r}")
  return SUPERNETS[space.name].subnet_specs(SUPERNETS[space.name](space), arch)


def reorder_channels(model, variables, keep_expands=(), **kw):
  """Function-preserving channel sorting by importance."""
  return model.reorder_channels(variables, keep_expands, **kw)


__all__ = ["BottleneckSpec", "ElasticIBN", "Head", "IBN", "IBNSpec", "MobileNetV3",
           "OFAMobileNetV3", "OFAResNet50", "ResNet", "SUPERNETS", "ScarletNet", "ScarletSupernet",
           "Supernet", "TunasNet", "TunasSupernet", "blocks", "build_supernet", "exact_module",
           "extract", "init_variables", "layers", "ops", "reorder_channels", "register_supernet",
           "subnet_specs", "supernet"]
