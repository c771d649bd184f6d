"""Supernets (masked, one shared parameter tree) and exact-shape subnets, as Flax Linen modules.

``ops`` (pure array functions) -> ``layers`` (Linen layers, elastic and plain) -> ``blocks`` (the
inverted-bottleneck block and the classifier head the supernets share) -> one module per
supernet (``ofa_mbv3``, ``ofa_resnet50``, ``scarlet``, ``tunas``) with its exact twin.

Every supernet derives from :class:`supernet.Supernet`, the contract; ``build_supernet(space,
**options)`` returns the supernet registered for a space, and ``net.extract``,
``net.exact_module``, ``net.subnet_specs`` and ``net.reorder_channels`` are its methods.
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


__all__ = ["BottleneckSpec", "ElasticIBN", "Head", "IBN", "IBNSpec", "MobileNetV3",
           "OFAMobileNetV3", "OFAResNet50", "ResNet", "SUPERNETS", "ScarletNet", "ScarletSupernet",
           "Supernet", "TunasNet", "TunasSupernet", "blocks", "build_supernet", "init_variables",
           "layers", "ops", "register_supernet", "supernet"]
