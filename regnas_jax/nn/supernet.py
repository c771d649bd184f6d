"""The supernet contract and the registry of supernets by search space.

A supernet is a Flax Linen module holding every weight of its space at the largest shape.  A
subnet is chosen by *data*: ``apply(variables, images, arch, train=...)`` derives channel masks,
kernel choices and active blocks from ``arch`` inside the traced function, so one compiled
program serves every subnet and ``jax.vmap`` over ``arch`` scores a population.

What a new supernet must provide (:class:`Supernet`; :func:`register_supernet` checks it):

* dataclass fields ``space`` (its :class:`~regnas_jax.spaces.SearchSpace`), ``bn_momentum``,
  ``bn_epsilon``, ``dropout_rate`` and ``dtype`` -- BN re-calibration runs
  ``model.clone(bn_momentum=0.0, dropout_rate=0.0)``, and ``dtype`` is the compute dtype;
* ``__call__(images, arch, train=False)`` -> float32 logits ``(N, num_classes)`` for
  ``images (N, R, R, 3)``.  In train mode BN uses batch statistics and, with
  ``mutable=['batch_stats']``, updates the running statistics of the channels and blocks the
  subnet uses only (an unused block keeps its statistics);
* ``exact_module(arch)`` -> a standalone Linen module with exactly the subnet's shapes
  (``module.apply(variables, images, train=False)``), ``extract(variables, arch)`` ->
  ``(exact_module, exact_variables)`` slicing the supernet's variables to it (the logits must
  equal the masked supernet's: the contract tests check it for every registered space), and
  ``subnet_specs(arch)`` -> the exact shapes (for tests and export);
* ``reorder_channels(variables, keep_expands=())`` -> variables with channels sorted by
  importance, function-preserving (OFA's progressive shrinking needs it); a supernet without
  it sets ``can_reorder = False`` and raises ``NotImplementedError``.

Optional class attributes: ``cpu_subnet_loop`` (``'scan'`` or ``'vmap'``: how the training
step runs several subnets on a CPU, default ``'scan'``) and ``op_average`` (``True`` when
``__call__`` takes TuNAS's op-warmup flags as ``average=``).

Optional: a **switch mode** (``switches = True`` and a dataclass field ``switch``, default
``False``).  ``model.clone(switch=True)`` is the same function, computed by branching on the
arch instead of masking: each searchable block runs ``flax.linen.switch`` over exact-size
variants of itself (one per width/SE choice, the kernel size a ``lax.switch`` inside its
depthwise layer, an unused block an identity or skip branch), built from the same variables.
Only the taken branch executes where the choice is not batched -- members run one at a time by
an unbatched ``lax.map`` (``evaluate.switch_mode``; ``config.score.switch``); under ``vmap`` a
switch turns into a select over every branch, so masks stay there.  The contract tests check
switch == masked (logits in both modes, written statistics) for every supernet that sets it.

Inverted-bottleneck supernets build their layers from ``nn/blocks.py`` (the masked branch, its
exact twin, the head).  Tests: the contract tests run for every registered supernet with the
space's entry in ``tests/contract.py`` ``CONFIGS`` (supernet options included).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from regnas_jax.spaces.base import SearchSpace

REQUIRED_FIELDS = ("space", "bn_momentum", "bn_epsilon", "dropout_rate", "dtype")
REQUIRED_METHODS = ("exact_module", "extract", "subnet_specs", "reorder_channels")


@runtime_checkable
class Supernet(Protocol):
  """The supernet contract (module docstring): what scoring, training and the jobs call."""

  space: SearchSpace
  bn_momentum: float
  bn_epsilon: float
  dropout_rate: float
  dtype: Any

  def apply(self, variables, *args, **kwargs): ...
  def clone(self, **kwargs): ...
  def exact_module(self, arch): ...
  def extract(self, variables, arch): ...
  def subnet_specs(self, arch): ...
  def reorder_channels(self, variables, keep_expands=()): ...


SUPERNETS: dict[str, type] = {}   # space name -> supernet class


def register_supernet(space_name: str, cls: type) -> type:
  """Register ``cls`` as the supernet of the space named ``space_name``.

  Raises ``TypeError`` naming the first missing field or method of the contract.
  """
  fields = getattr(cls, "__dataclass_fields__", {})
  for f in REQUIRED_FIELDS:
    if f not in fields:
      raise TypeError(f"register_supernet: {cls.__name__} has no field {f!r}")
  for m in REQUIRED_METHODS + ("apply", "clone"):
    if not callable(getattr(cls, m, None)):
      raise TypeError(f"register_supernet: {cls.__name__} has no method {m!r}")
  SUPERNETS[space_name] = cls
  return cls


def build_supernet(space: SearchSpace, **options):
  """The supernet module registered for ``space`` (options: its dataclass fields, e.g. dtype,
  dropout_rate; depthwise_impl and kernel_transform where the supernet has them)."""
  if space.name not in SUPERNETS:
    raise ValueError(f"no supernet registered for space {space.name!r}")
  return SUPERNETS[space.name](space, **options)
