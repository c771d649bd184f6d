"""The search-space contract: what every space provides, and the machinery they share.

An architecture is a ``NamedTuple`` of small int32 arrays holding *choice indices* (not values);
each field has a fixed shape per space and its choices are sorted ascending, so "larger choice"
is simply "larger index".  A population is the same tuple with one leading axis.  Everything on
arrays here is written with ``jax.numpy`` and works under ``jit``/``vmap``; validation and JSON
work on concrete values only.

:class:`SearchSpace` is the contract every job and search algorithm relies on (its abstract
methods are what a new space must write); :class:`PolicySpace` and :class:`SkipSpace` are the
optional extras that TuNAS's policy and SCARLET's hierarchical mutation use when a space has them.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping, NamedTuple, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax.errors import InvalidArchError, InvalidSpaceError

Arch = Any  # a space's NamedTuple of int arrays


@dataclasses.dataclass(frozen=True)
class Field:
  """One decision of a space: its name, per-arch shape and the readable values of its choices."""
  name: str
  shape: tuple[int, ...]
  choices: tuple[Any, ...]

  @property
  def size(self) -> int:
    return len(self.choices)


def make_divisible(v: float, divisor: int = 8, min_val: int | None = None) -> int:
  """Round a channel count to a multiple of ``divisor`` without dropping more than 10%.

  This is the MobileNet rounding rule that OFA uses for every width (mobilenet slim code).
  """
  min_val = divisor if min_val is None else min_val
  new_v = max(min_val, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def check_choices(name: str, values: Sequence[Any], *, positive: bool = True) -> tuple:
  """Validate a choice list of a space config: non-empty, strictly ascending, positive."""
  values = tuple(values)
  if not values:
    raise InvalidSpaceError(f"{name}: needs at least one choice")
  if any(b <= a for a, b in zip(values, values[1:])):
    raise InvalidSpaceError(f"{name}: choices must be strictly ascending, got {values}")
  if positive and values[0] <= 0:
    raise InvalidSpaceError(f"{name}: choices must be positive, got {values}")
  return values


class SearchSpace(abc.ABC):
  """The search-space contract.

  A space is a frozen dataclass whose fields are its configuration (``width_mult``,
  ``resolutions``, ...; :meth:`config` records them in checkpoints and results).  It sets two
  class attributes and writes the abstract methods below; sampling, crossover, min/max,
  validation and population JSON come from this class and work for any field layout.

  What a new space must provide (each is called by a job or a search algorithm):

  * ``name`` (class attribute): the registry name, stored in JSON and checkpoints;
    ``arch_type``: the ``NamedTuple`` of its architectures.
  * :meth:`fields` -- the decisions: name, per-arch shape and readable choice values (ascending:
    a larger index is a larger choice).
  * :meth:`contains` / :meth:`grow_to_contain` -- REG-NAS's weight-inclusion order and its
    repair (the family search needs both).
  * :meth:`mutate` -- the space's mutation (evolution, NSGA-II's ``'space'`` mutation).
  * :meth:`macs` / :meth:`params` -- analytic costs of the exact subnet (exact integers for
    concrete archs, float32 under ``jit``); the contract tests compare them with the costs
    counted off the exact module's program.
  * :meth:`arch_to_dict` / :meth:`arch_from_dict` -- a readable form that round-trips, with
    :class:`InvalidArchError` messages naming the offending entry; :meth:`format` -- a one-line
    summary for tables; :meth:`num_archs` -- distinct networks per resolution, for the logs.
  * :meth:`canonicalize` only when some decisions can be unused (a skipped block's kernel): the
    search caches scores by the canonical form.

  Every space also needs a supernet registered for it (``regnas_jax.nn.supernet``) and a
  ``resolutions`` and ``num_classes`` field (the jobs read them).

  Tests: the contract tests (``tests/test_contract_*.py``) run for every registered space; each
  needs one entry in ``tests/contract.py`` ``CONFIGS`` -- a small, CPU-sized configuration of the
  space and its supernet (a registered space without one fails them with a message saying so).
  They check JSON round trips and error messages, validation, ``contains`` against the
  parameters ``extract`` slices, ``macs``/``params`` against the exact subnet, masked against
  extracted logits and vmap against member-by-member.
  """

  name: str = ""
  arch_type: type = NamedTuple

  def _check_common(self, stems: Mapping, default_resolutions: Mapping) -> None:
    """Validate the fields every image space has (stem, width_mult, num_classes, resolutions)
    and fill in the stem's default resolutions; called from a subclass's ``__post_init__``."""
    if self.stem not in stems:
      raise InvalidSpaceError(f"stem: {self.stem!r} is not one of {tuple(stems)}")
    if not self.width_mult > 0:
      raise InvalidSpaceError(f"width_mult: must be > 0, got {self.width_mult}")
    if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
      raise InvalidSpaceError(f"num_classes: must be a positive integer, got {self.num_classes!r}")
    res = default_resolutions[self.stem] if self.resolutions is None else self.resolutions
    object.__setattr__(self, "resolutions", check_choices("resolutions", res))

  # -- structure ---------------------------------------------------------------------------
  @abc.abstractmethod
  def fields(self) -> tuple[Field, ...]:
    """The decisions of an architecture, in the order of ``arch_type``'s fields."""

  def field(self, name: str) -> Field:
    for f in self.fields():
      if f.name == name:
        return f
    raise KeyError(name)

  def choices(self) -> dict[str, tuple]:
    """Readable choice values per field, e.g. ``{'kernel': (3, 5, 7), ...}``."""
    return {f.name: f.choices for f in self.fields()}

  def _full(self, pick) -> Arch:
    return self.arch_type(**{
        f.name: jnp.full(f.shape, pick(f), jnp.int32) for f in self.fields()})

  def allowed_indices(self, allowed: Mapping[str, Sequence[int]] | None) -> dict[str, tuple]:
    """Per field, the choice indices a restricted sampler may use (default: all).

    ``allowed`` maps field names to index lists (e.g. progressive shrinking unlocks
    ``{'kernel': (0, 1, 2), 'expand': (2,), 'depth': (2,)}``); unnamed fields allow everything.
    """
    allowed = dict(allowed or {})
    names = {f.name for f in self.fields()}
    unknown = sorted(set(allowed) - names)
    if unknown:
      raise InvalidArchError(f"allowed.{unknown[0]}: unknown field (fields: {sorted(names)})")
    out = {}
    for f in self.fields():
      idx = tuple(sorted({int(i) for i in allowed.get(f.name, range(f.size))}))
      if not idx or idx[0] < 0 or idx[-1] >= f.size:
        raise InvalidArchError(f"allowed.{f.name}: indices {idx} not a non-empty subset of "
                               f"0..{f.size - 1}")
      out[f.name] = idx
    return out

  def min_arch(self, allowed: Mapping[str, Sequence[int]] | None = None) -> Arch:
    """The architecture taking the smallest (allowed) choice everywhere."""
    idx = self.allowed_indices(allowed)
    return self._full(lambda f: idx[f.name][0])

  def max_arch(self, allowed: Mapping[str, Sequence[int]] | None = None) -> Arch:
    """The architecture taking the largest (allowed) choice everywhere."""
    idx = self.allowed_indices(allowed)
    return self._full(lambda f: idx[f.name][-1])

  # -- sampling and variation (jit/vmap friendly) -------------------------------------------
  def sample(self, key: jax.Array, n: int | None = None,
             allowed: Mapping[str, Sequence[int]] | None = None) -> Arch:
    """Uniform random choices per element; ``n`` adds a leading population axis.

    ``allowed`` restricts each named field to a subset of choice indices (see
    :meth:`allowed_indices`); sampling stays uniform over that subset.
    """
    lead = () if n is None else (n,)
    idx = self.allowed_indices(allowed)
    keys = jax.random.split(key, len(self.fields()))
    out = {}
    for k, f in zip(keys, self.fields()):
      opts = idx[f.name]
      pick = jax.random.randint(k, lead + f.shape, 0, len(opts), jnp.int32)
      out[f.name] = pick if len(opts) == f.size else jnp.asarray(opts, jnp.int32)[pick]
    return self.arch_type(**out)

  def crossover(self, key: jax.Array, a: Arch, b: Arch) -> Arch:
    """Uniform crossover: every element comes from ``a`` or ``b`` with probability 1/2."""
    keys = jax.random.split(key, len(a))
    return type(a)(*[jnp.where(jax.random.bernoulli(k, 0.5, x.shape), x, y)
                     for k, x, y in zip(keys, a, b)])

  @abc.abstractmethod
  def mutate(self, key: jax.Array, arch: Arch, prob: float = 0.1,
             resolution_prob: float | None = None) -> Arch:
    """One mutant of a single ``arch`` (jit/vmap friendly): each decision re-sampled with
    ``prob`` (the resolution with ``resolution_prob``, default ``prob``)."""

  @abc.abstractmethod
  def contains(self, big: Arch, small: Arch) -> jax.Array:
    """REG-NAS weight inclusion: bool, whether ``big`` holds every weight ``small`` uses
    (broadcasts over populations; works on concrete and traced archs)."""

  @abc.abstractmethod
  def grow_to_contain(self, arch: Arch, small: Arch) -> Arch:
    """The nearest architecture to ``arch`` that contains ``small`` (REG-NAS repair): every
    choice ``small`` relies on is raised to at least ``small``'s, nothing else changes."""

  def canonicalize(self, arch: Arch) -> Arch:
    """Same network, unused decisions set to a fixed value (default: nothing unused)."""
    return arch

  # -- costs ---------------------------------------------------------------------------------
  @abc.abstractmethod
  def macs(self, arch: Arch):
    """Multiply-accumulates of one image through the exact subnet (conv and linear layers)."""

  @abc.abstractmethod
  def params(self, arch: Arch):
    """Parameters of the exact subnet."""

  @abc.abstractmethod
  def num_archs(self) -> int:
    """Number of distinct networks per resolution."""

  # -- concrete-value helpers ------------------------------------------------------------------
  def validate(self, arch: Arch, *, population: bool | None = None) -> Arch:
    """Check structure, dtype and index range; return the arch as int32 numpy arrays.

    ``population=None`` accepts a single arch or a population (one leading axis); errors name
    the field and the offending element, e.g. ``kernel[3]: choice index 5 not in 0..2``.
    """
    if isinstance(arch, Mapping):
      got = set(arch)
    elif isinstance(arch, tuple) and hasattr(arch, "_fields"):
      got = set(arch._fields)
      arch = arch._asdict()
    else:
      raise InvalidArchError(
          f"{self.name}: an architecture must be a {self.arch_type.__name__} or a mapping of "
          f"its fields, got {type(arch).__name__}")
    want = [f.name for f in self.fields()]
    missing, extra = [n for n in want if n not in got], sorted(got - set(want))
    if missing:
      raise InvalidArchError(f"{self.name}: missing field {missing[0]!r}")
    if extra:
      raise InvalidArchError(f"{self.name}: unknown field {extra[0]!r} (fields: {want})")
    out, lead = {}, None
    for f in self.fields():
      x = np.asarray(arch[f.name])
      if x.dtype.kind not in "iu":
        if x.dtype.kind == "f" and np.all(np.isfinite(x)) and np.all(x == np.round(x)):
          x = x.astype(np.int64)
        else:
          raise InvalidArchError(
              f"{f.name}: choice indices must be integers, got dtype {x.dtype}")
      extra_dims = x.ndim - len(f.shape)
      if x.shape[extra_dims:] != f.shape or extra_dims not in (0, 1) or (
          population is True and extra_dims != 1) or (population is False and extra_dims):
        raise InvalidArchError(
            f"{f.name}: expected shape {f.shape}"
            f"{' with one leading population axis' if population else ''}, got {x.shape}")
      if lead is None:
        lead = x.shape[:extra_dims]
      elif x.shape[:extra_dims] != lead:
        raise InvalidArchError(
            f"{f.name}: population size {x.shape[:extra_dims]} differs from other fields {lead}")
      bad = (x < 0) | (x >= f.size)
      if bad.any():   # (np.argwhere of a 0-d array has no entries to count)
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f"{f.name}[{', '.join(map(str, idx))}]" if idx else f.name
        raise InvalidArchError(
            f"{where}: choice index {int(x[idx])} not in 0..{f.size - 1} "
            f"(choices {', '.join(map(str, f.choices))})")
      out[f.name] = x.astype(np.int32)
    return self.arch_type(**out)

  # -- resolution: the images' side -----------------------------------------------------------
  def check_resolution(self, arch: Arch, side: int, where: str = "") -> None:
    """Raise ``ValueError`` when the ``resolution`` field of a concrete arch or population
    names another input side than ``side`` (the ``R`` of images ``(N, R, R, 3)``).

    A traced field (an argument of ``jit`` / ``vmap``) cannot be read and is not checked: the
    host code pairing images with populations checks before tracing (scoring, training).
    """
    r = arch.resolution
    if isinstance(r, jax.core.Tracer):
      return
    n = len(self.resolutions)
    for i in np.unique(np.asarray(r)):
      named = f"{self.resolutions[i]} px" if 0 <= i < n else f"index {i} (none)"
      if not (0 <= i < n and self.resolutions[i] == side):
        raise ValueError(f"{where + ': ' if where else ''}the arch's resolution is {named} "
                         f"(index {i} of {tuple(self.resolutions)}) but the images are "
                         f"{side} px")

  def at_resolution(self, arch: Arch, side: int) -> Arch:
    """``arch`` (one or a population) with its ``resolution`` field set to ``side``'s index;
    ``ValueError`` when ``side`` is not one of ``resolutions``."""
    if side not in self.resolutions:
      raise ValueError(f"{self.name}: {side} px is not one of the resolutions "
                       f"{tuple(self.resolutions)}")
    shape = np.shape(arch.resolution)   # also of a traced field: the new one is a constant
    return arch._replace(resolution=np.full(shape, self.resolutions.index(side), np.int32))

  @abc.abstractmethod
  def arch_to_dict(self, arch: Arch) -> dict:
    """Readable form of one concrete architecture as a JSON-able dict (``{"space": name,
    ...}``: choice values, not indices)."""

  @abc.abstractmethod
  def arch_from_dict(self, obj: Mapping) -> Arch:
    """Parse :meth:`arch_to_dict` output; :class:`InvalidArchError` names the bad entry."""

  @abc.abstractmethod
  def format(self, arch: Arch) -> str:
    """One-line summary of one concrete architecture (tables, logs)."""

  def population_to_dicts(self, pop: Arch) -> list[dict]:
    pop = self.validate(pop, population=True)
    return [self.arch_to_dict(jax.tree.map(lambda x: x[i], pop)) for i in range(len(pop[0]))]

  def population_from_dicts(self, objs: Sequence[Mapping]) -> Arch:
    if not isinstance(objs, (list, tuple)) or not objs:
      raise InvalidArchError("a population must be a non-empty JSON list of architectures")
    archs = []
    for i, o in enumerate(objs):
      try:
        archs.append(self.arch_from_dict(o))
      except InvalidArchError as e:
        raise InvalidArchError(f"[{i}].{e}") from None
    return stack(archs)

  def config(self) -> dict:
    """The space's configuration as plain JSON-able values (recorded in checkpoints)."""
    d = {"space": self.name}
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      d[f.name] = list(v) if isinstance(v, tuple) else v
    return d


@runtime_checkable
class PolicySpace(Protocol):
  """Extras a space offers to TuNAS's policy (``search/tunas.py``) and job (``jobs/tunas.py``).

  * ``choice_mask()`` -- per field a bool ``shape + (k,)``: which choices are valid (e.g. two
    width multipliers that round to one width: only the first is valid), so the policy never
    spreads probability over copies of one network;
  * ``active_decisions(arch)`` -- per field a bool of the field's shape: which decisions shape
    the network (a skipped layer's kernel does not), for the hierarchical log-probability;
  * ``warmup_fields`` -- the fields filter warmup widens to their largest choice.
  """

  warmup_fields: tuple

  def choice_mask(self) -> dict: ...
  def active_decisions(self, arch: Arch) -> dict: ...


@runtime_checkable
class SkipSpace(Protocol):
  """Extras of a space with a "skip" choice (SCARLET's hierarchical mutation prunes to it):
  ``skip_field`` (a field name), ``skip_index`` (the skip's choice index in it) and
  ``skip_allowed`` (bool of that field's shape: where a skip may go)."""

  skip_field: str
  skip_index: int
  skip_allowed: Any


def stack(archs: Sequence[Arch]) -> Arch:
  """Stack single architectures into a population (leading axis)."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *archs)


def member(pop: Arch, i: int) -> Arch:
  """The ``i``-th architecture of a population."""
  return jax.tree.map(lambda x: x[i], pop)


def pop_size(pop: Arch) -> int:
  return int(np.shape(jax.tree.leaves(pop)[0])[0])


def take(pop: Arch, idx) -> Arch:
  """Members ``idx`` (int ``(K,)``) of a population as numpy arrays with leading axis ``K``."""
  return jax.tree.map(lambda x: np.asarray(x)[np.asarray(idx)], pop)


def concat(*pops: Arch) -> Arch:
  """Populations one after another as int32 numpy arrays; ``None`` and empty ones are skipped
  (a search's proposal batches often keep nothing)."""
  pops = [p for p in pops if p is not None and pop_size(p)]
  if not pops:
    raise ValueError("concat: no non-empty population given")
  return jax.tree.map(lambda *xs: np.concatenate(xs).astype(np.int32), *pops)


# -- JSON helpers shared by the spaces ------------------------------------------------------
def json_get(obj: Mapping, key: str, where: str) -> Any:
  if not isinstance(obj, Mapping):
    raise InvalidArchError(f"{where or 'arch'}: expected a JSON object, got {type(obj).__name__}")
  if key not in obj:
    raise InvalidArchError(f"{where + '.' if where else ''}{key}: missing")
  return obj[key]


def json_choice(value: Any, choices: Sequence, where: str) -> int:
  """Index of a readable ``value`` in ``choices`` or an error naming ``where``."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise InvalidArchError(f"{where}: expected a number, got {value!r}")
  for i, c in enumerate(choices):
    if value == c:
      return i
  raise InvalidArchError(f"{where}: {value!r} is not one of ({', '.join(map(str, choices))})")


def json_list(value: Any, length: int, where: str) -> list:
  if not isinstance(value, (list, tuple)):
    raise InvalidArchError(f"{where}: expected a list, got {value!r}")
  if len(value) != length:
    raise InvalidArchError(f"{where}: expected {length} entries, got {len(value)}")
  return list(value)


def json_keys(obj: Mapping, allowed: Sequence[str], where: str) -> None:
  extra = sorted(set(obj) - set(allowed))
  if extra:
    raise InvalidArchError(
        f"{where + '.' if where else ''}{extra[0]}: unknown key (allowed: {', '.join(allowed)})")


# -- helpers of the spaces' array code ---------------------------------------------------------
def readable(v):
  """A choice value for JSON: 2.0 -> 2, 0.25 stays 0.25."""
  return int(v) if float(v).is_integer() else float(v)


def prep(*archs):
  """(jax.numpy, archs) under tracing; (numpy, archs as numpy) for concrete archs, so that
  costs of concrete archs are exact integers."""
  try:
    archs = jax.tree.map(np.asarray, archs)
  except jax.errors.TracerArrayConversionError:
    return jnp, (archs[0] if len(archs) == 1 else archs)
  return np, (archs[0] if len(archs) == 1 else archs)


def cost_dtype(xp):
  return jnp.float32 if xp is jnp else np.int64


def down(h, stride, xp):
  """Output side of a 'same'-padded, odd-kernel conv: ceil(h / stride)."""
  return h if stride == 1 else (h + stride - 1) // stride
