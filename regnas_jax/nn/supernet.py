"""The supernet contract (:class:`Supernet`) and the registry of supernets by search space.

A supernet is a Flax Linen module holding every weight of its space at the largest shape.  A
subnet is chosen by *data*: ``apply(variables, images, arch, train=...)`` derives channel masks,
kernel choices and active blocks from ``arch`` inside the traced function, so one compiled
program serves every subnet and ``jax.vmap`` over ``arch`` scores a population.

A supernet subclasses :class:`Supernet` and states what differs (the contract tests run on it
once its space has an entry in ``tests/contract.py``):

* the dataclass fields :data:`REQUIRED_FIELDS` -- BN re-calibration runs
  ``model.clone(bn_momentum=0.0, dropout_rate=0.0)``; ``dtype`` is the compute dtype;
* ``forward(images, arch, train)`` (``@nn.compact``): float32 logits ``(N, num_classes)`` for
  ``images (N, R, R, 3)``.  In train mode BN uses batch statistics and, with
  ``mutable=['batch_stats']``, updates the statistics of the channels and blocks the subnet
  uses only.  Callers call the module (``__call__``, below), never ``forward``;
* ``subnet_specs(arch)``, ``exact_module(arch)`` and ``extract(variables, arch)``: the exact
  shapes of a concrete arch, a standalone Linen module with exactly those shapes
  (``module.apply(variables, images, train=False)``), and that module with the supernet's
  variables sliced to it -- its logits equal the masked supernet's;
* the capabilities it has, class attributes whose defaults are below: ``can_reorder``
  (``reorder_channels``, function-preserving channel sorting, for progressive shrinking),
  ``switches`` (a dataclass field ``switch``: ``clone(switch=True)`` computes the same function
  by ``lax.switch`` over exact-size branches, for members run one at a time -- under ``vmap``
  a switch selects over every branch, so batched scoring stays masked), ``cpu_subnet_loop``
  (``'scan'`` or ``'vmap'``: how a training step runs several subnets on a CPU) and
  ``op_average`` (``forward`` takes TuNAS's op-warmup flags ``average=`` for the fields in
  ``op_decisions``).

**Resolution.**  An arch's ``resolution`` field names the input side its subnet is meant for;
the images carry the side the program computes at, and the two must agree.  ``__call__``
checks a concrete arch (numpy or device arrays, also ones a traced function closes over)
against the images and raises a ``ValueError`` naming both sizes
(``space.check_resolution``).  A traced arch (an argument of ``jit``, ``vmap``, ``lax.map``)
cannot be read there, so the host code that pairs images with populations checks before
tracing: scoring (:mod:`regnas_jax.evaluate`: each call gets one resolution's members) and
the training step (its archs' field set to the side of the images it trains on, checked
against the resolution the step was built for).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn

from regnas_jax.spaces.base import SearchSpace

REQUIRED_FIELDS = ("space", "bn_momentum", "bn_epsilon", "dropout_rate", "dtype")
HOST_METHODS = ("subnet_specs", "exact_module", "extract", "reorder_channels")


class Supernet(nn.Module):
  """Base of every supernet (module docstring): the call, the capabilities with their defaults
  and the methods a subclass implements."""

  can_reorder: ClassVar[bool] = False
  switches: ClassVar[bool] = False
  cpu_subnet_loop: ClassVar[str] = "scan"
  op_average: ClassVar[bool] = False
  op_decisions: ClassVar[tuple] = ()

  def __init_subclass__(cls, **kwargs):
    # The host methods take variables, not a module scope: Flax must not wrap them.
    for name in HOST_METHODS:
      if name in cls.__dict__:
        nn.nowrap(cls.__dict__[name])
    super().__init_subclass__(**kwargs)

  def __call__(self, images, arch, train: bool = False, **kwargs):
    """Float32 logits ``(N, num_classes)`` of ``forward``, after checking a concrete arch's
    resolution against the images' side (module docstring)."""
    self.space.check_resolution(arch, images.shape[1], type(self).__name__)
    return self.forward(images, arch, train, **kwargs)

  def forward(self, images, arch, train: bool = False):
    """The subclass's ``@nn.compact`` network: float32 logits ``(N, num_classes)`` for
    ``images (N, R, R, 3)`` and one ``arch`` (module docstring)."""
    raise NotImplementedError

  def subnet_specs(self, arch):
    """The exact shapes of the subnet a concrete ``arch`` selects."""
    raise NotImplementedError

  def exact_module(self, arch):
    """The standalone exact-shape Linen module of one subnet (no variables)."""
    raise NotImplementedError

  def extract(self, variables, arch):
    """``(exact_module(arch), variables sliced to it)`` (the batch statistics may be the ones
    re-calibrated for this subnet)."""
    raise NotImplementedError

  def reorder_channels(self, variables, keep_expands=(), **kw):
    """``variables`` with channels sorted by importance, the function unchanged; the widths of
    the expand ratios ``keep_expands`` (already trained) keep their channel sets."""
    raise NotImplementedError(f"{type(self).__name__} has no channel re-ordering")


SUPERNETS: dict[str, type] = {}   # space name -> supernet class


def _defines(cls: type, name: str) -> bool:
  """Whether a class between ``cls`` and :class:`Supernet` defines ``name``."""
  return next(k for k in cls.__mro__ if name in vars(k)) is not Supernet


def contract_problem(cls) -> str | None:
  """What ``cls`` misses of the contract, in words, or ``None``."""
  if not (isinstance(cls, type) and issubclass(cls, Supernet)):
    name = cls.__name__ if isinstance(cls, type) else repr(cls)
    return f"{name} does not derive from regnas_jax.nn.supernet.Supernet"
  fields = {f.name for f in dataclasses.fields(cls)}
  needed = [f for f in REQUIRED_FIELDS if f not in fields]
  needed += ["switch"] if cls.switches and "switch" not in fields else []
  if needed:
    return f"{cls.__name__} has no field {needed[0]!r}"
  methods = ["forward", "subnet_specs", "exact_module", "extract"]
  methods += ["reorder_channels"] if cls.can_reorder else []
  missing = [m for m in methods if not _defines(cls, m)]
  return f"{cls.__name__} has no method {missing[0]!r}" if missing else None


def register_supernet(space_name: str, cls: type) -> type:
  """Register ``cls`` as the supernet of the space named ``space_name``.

  Raises ``TypeError`` naming what ``cls`` misses of the contract (:func:`contract_problem`).
  """
  problem = contract_problem(cls)
  if problem:
    raise TypeError(f"register_supernet: {problem}")
  SUPERNETS[space_name] = cls
  return cls


def build_supernet(space: SearchSpace, **options):
  """The supernet module registered for ``space`` (options: its dataclass fields, e.g. dtype,
  dropout_rate; depthwise_impl and kernel_transform where the supernet has them)."""
  if space.name not in SUPERNETS:
    raise ValueError(f"no supernet registered for space {space.name!r}")
  return SUPERNETS[space.name](space, **options)
