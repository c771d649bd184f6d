"""Checkpoints of training (and later search) state with orbax, plus clear errors.

A checkpoint is one orbax step directory holding two items:

* ``state``: the pytree of arrays (parameters, BN statistics, optimiser state, step, ...);
* ``meta``: JSON describing what the arrays belong to (the search space, the supernet options,
  the training schedule) and where the data iterator stands.

``restore`` checks ``meta`` against what the caller is about to run before touching the arrays,
so a work dir written for another space or schedule gives an error naming the first differing
setting instead of a shape dump; unreadable or truncated checkpoints give :class:`CheckpointError`
too.  Orbax writes each step to a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used; the message says which and why."""


def _ocp():
  import orbax.checkpoint as ocp  # heavy import; only where checkpoints are used

  return ocp


def first_difference(saved: Any, current: Any, where: str = "") -> str | None:
  """Path and values of the first difference between two JSON-like values, or None."""
  if isinstance(saved, dict) and isinstance(current, dict):
    for k in sorted(set(saved) | set(current)):
      if k not in saved or k not in current:
        return f"{where}{k}: saved {saved.get(k, '(absent)')!r}, now {current.get(k, '(absent)')!r}"
      d = first_difference(saved[k], current[k], f"{where}{k}.")
      if d:
        return d
    return None
  if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
    if len(saved) == len(current):
      for i, (a, b) in enumerate(zip(saved, current)):
        d = first_difference(a, b, f"{where[:-1]}[{i}].")
        if d:
          return d
      return None
  if saved != current:
    return f"{where[:-1]}: saved {saved!r}, now {current!r}"
  return None


def _jsonable(x):
  return json.loads(json.dumps(x, default=lambda v: np.asarray(v).tolist()))


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs in ``directory`` (orbax CheckpointManager).

  Args:
    directory: where the step directories live (created on the first save).
    identity: JSON-able description of what the state belongs to; stored with every save and
      compared on restore (a mismatch is an error naming the first differing key).
    max_to_keep: number of most recent checkpoints kept.
  """

  def __init__(self, directory: str, identity: dict, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.identity = _jsonable(identity)
    self._max_to_keep = max_to_keep
    self._mngr = None

  @property
  def manager(self):
    if self._mngr is None:
      ocp = _ocp()
      opts = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True,
                                          enable_async_checkpointing=False)
      self._mngr = ocp.CheckpointManager(self.directory, options=opts)
    return self._mngr

  def latest_step(self) -> int | None:
    if not os.path.isdir(self.directory):
      return None
    try:
      return self.manager.latest_step()
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"cannot list checkpoints in {self.directory}: {e}") from None

  def save(self, step: int, state: Any, extra: dict | None = None) -> None:
    ocp = _ocp()
    meta = {"identity": self.identity, "extra": _jsonable(extra or {})}
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
    self.manager.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """``(state, extra)`` of ``step`` (default: the latest), shaped like ``target``."""
    ocp = _ocp()
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    where = f"checkpoint {os.path.join(self.directory, str(step))}"
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{where}: unreadable metadata ({_short(e)})") from None
    diff = first_difference(meta.get("identity", {}), self.identity) if isinstance(meta, dict) else "no meta"
    if diff:
      raise CheckpointError(f"{where} belongs to another run ({diff}); use another --workdir "
                            f"or remove that one")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      state = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{where}: cannot restore the arrays ({_short(e)})") from None
    mism = [(jax.tree_util.keystr(p), a.shape, b.shape) for (p, a), b in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(target))
        if np.shape(a) != np.shape(b)]
    if mism:
      p, a, b = mism[0]
      raise CheckpointError(f"{where}: {p} has shape {a}, expected {b}")
    return state, meta.get("extra", {})

  def restore_arrays(self, step: int | None = None) -> Any:
    """The saved arrays of ``step`` (default: the latest) as nested dicts/lists of numpy arrays,
    without a target structure and without the identity check (for inspection and tests)."""
    ocp = _ocp()
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      return self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint {os.path.join(self.directory, str(step))}: cannot "
                            f"restore the arrays ({_short(e)})") from None

  def close(self) -> None:
    if self._mngr is not None:
      self._mngr.wait_until_finished()
      self._mngr.close()
      self._mngr = None


def _short(e: BaseException) -> str:
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  return (f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__)
