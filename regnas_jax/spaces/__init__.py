"""Search spaces: architectures as small integer pytrees, with costs, inclusion and JSON.

``get_space(name, **config)`` builds a registered space by name (the name stored in JSON and
checkpoints); ``register_space(cls)`` adds one (its contract: :class:`base.SearchSpace`).
"""

from regnas_jax.spaces.base import (Field, InvalidArchError, InvalidSpaceError, PolicySpace,
                                    SearchSpace, SkipSpace, make_divisible, member, pop_size,
                                    stack)
from regnas_jax.spaces.ofa_mbv3 import MBV3Arch, OFAMobileNetV3Space
from regnas_jax.spaces.ofa_resnet50 import OFAResNet50Space, ResNetArch
from regnas_jax.spaces.scarlet import ScarletArch, ScarletS1Space, ScarletS2Space
from regnas_jax.spaces.tunas import (MobileNetV3LikeSpace, ProxylessNASEnlargedSpace,
                                     ProxylessNASSpace, TunasArch)

SPACES: dict[str, type] = {}


def register_space(cls: type) -> type:
  """Register a :class:`SearchSpace` subclass under its ``name`` (usable as a decorator).

  The class must implement every abstract method of the contract; a missing one is a
  ``TypeError`` here rather than at the first call.
  """
  if not (isinstance(cls, type) and issubclass(cls, SearchSpace)):
    raise TypeError(f"register_space: {cls!r} is not a SearchSpace subclass")
  missing = sorted(getattr(cls, "__abstractmethods__", ()))
  if missing:
    raise TypeError(f"register_space: {cls.__name__} does not implement {', '.join(missing)}")
  if not cls.name:
    raise TypeError(f"register_space: {cls.__name__} has no name")
  SPACES[cls.name] = cls
  return cls


for _cls in (OFAMobileNetV3Space, OFAResNet50Space, ScarletS1Space, ScarletS2Space,
             ProxylessNASSpace, ProxylessNASEnlargedSpace, MobileNetV3LikeSpace):
  register_space(_cls)


def get_space(name: str, **config) -> SearchSpace:
  """Build the space registered as ``name`` with the given configuration."""
  if name not in SPACES:
    raise InvalidSpaceError(f"space: unknown search space {name!r} (known: {', '.join(SPACES)})")
  try:
    return SPACES[name](**config)
  except TypeError as e:  # unknown keyword
    raise InvalidSpaceError(f"space {name!r}: {e}") from None


__all__ = ["Field", "InvalidArchError", "InvalidSpaceError", "MBV3Arch", "MobileNetV3LikeSpace",
           "OFAMobileNetV3Space", "OFAResNet50Space", "ProxylessNASEnlargedSpace",
           "ProxylessNASSpace", "ResNetArch", "ScarletArch", "ScarletS1Space", "ScarletS2Space",
           "SPACES", "TunasArch", "SearchSpace", "PolicySpace", "SkipSpace", "register_space",
           "get_space", "make_divisible", "member", "pop_size", "stack"]
