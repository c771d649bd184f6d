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

:meth:`Checkpointer.restore_latest` falls back to the newest intact step when the latest one is
damaged (a warning names it, and the damaged directory is moved aside to
``<directory>/damaged-<step>`` so that nothing is lost and the step can be saved again).  A save
that fails (disk full, read-only work dir) is a :class:`CheckpointError` naming the intact step.

Saves are asynchronous: :meth:`Checkpointer.save` returns once the arrays are copied to the
host, and they are written while training goes on.  The next save, :meth:`Checkpointer.wait`
and :meth:`Checkpointer.close` wait for it (a failed write is reported there, naming its step),
and so does a process that ends through :func:`regnas_jax.stopping.exit_now` (SIGTERM, an
error): the save in flight completes first.  Every process of a multi-process run calls
``save`` (orbax writes collectively); directories may be local or ``gs://``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable

import jax
import numpy as np

from regnas_jax import fs, stopping
from regnas_jax.errors import StateError
from regnas_jax.identity import difference
from regnas_jax.persist import jsonable


class CheckpointError(StateError):
  """A checkpoint that cannot be used or written; the message says which and why."""


def _ocp():
  import orbax.checkpoint as ocp  # heavy import; only where checkpoints are used

  return ocp


class Checkpointer:
  """Saves and restores ``(state, meta)`` pairs in ``directory`` (orbax CheckpointManager).

  Args:
    directory: where the step directories live (created on the first save).
    identity: JSON-able description of what the state belongs to (:mod:`regnas_jax.identity`);
      stored with every save and compared on restore through
      :func:`regnas_jax.identity.difference` (a mismatch is an error naming the first
      differing key).
    max_to_keep: number of most recent checkpoints kept.

  After a restore, ``recorded_identity`` is the identity saved with that step as it was written
  (possibly of an earlier version): what the restored weights' fingerprint is computed from.
  """

  def __init__(self, directory: str, identity: dict, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory) if fs.is_local(directory) else directory
    self.identity = jsonable(identity)
    self.recorded_identity = None
    self._max_to_keep = max_to_keep
    self._mngr = None
    self._pending = None       # the step of the save in flight
    self._quiet = None         # orbax's logging silenced while a save is in flight

  @property
  def manager(self):
    if self._mngr is None:
      ocp = _ocp()
      opts = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True,
                                          enable_async_checkpointing=True)
      self._mngr = ocp.CheckpointManager(fs.path(self.directory), options=opts)
    return self._mngr

  def _join(self, *parts) -> str:
    return fs.join(self.directory, *parts)

  def latest_step(self) -> int | None:
    self.wait()
    if not fs.isdir(self.directory):
      return None
    try:
      return self.manager.latest_step()
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"cannot list checkpoints in {self.directory}: {e}") from None

  def save(self, step: int, state: Any, extra: dict | None = None) -> None:
    """Start saving ``state`` as ``step`` (module docstring: asynchronous); a failure of the
    previous save is raised here first."""
    ocp = _ocp()
    self.wait()
    meta = {"identity": self.identity, "extra": jsonable(extra or {})}
    self._quiet = _quiet_orbax()   # its writer threads log the traceback a failed save raises
    self._quiet.__enter__()
    self._pending = step
    stopping.on_exit(self._finish_on_exit)
    try:
      self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as e:  # noqa: BLE001 - disk full, read-only dir, ...: one line, not 200
      self._failed(e)

  def wait(self) -> None:
    """Wait for the save in flight; :class:`CheckpointError` if it failed."""
    if self._pending is None:
      return
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      self._failed(e)
    self._settle(ok=True)

  def _settle(self, ok: bool) -> None:
    self._pending = None
    stopping.on_exit(self._finish_on_exit, remove=True)
    quiet, self._quiet = self._quiet, None
    if quiet is not None:
      if ok:
        quiet.__exit__(None, None, None)
      else:
        quiet.__exit__(CheckpointError, CheckpointError(""), None)

  def _failed(self, e: BaseException) -> None:
    step = self._pending
    self._settle(ok=False)
    intact = self._steps_on_disk()
    raise CheckpointError(
        f"cannot save the checkpoint of step {step} in {self.directory} ({_reason(e)}); "
        f"{'step ' + str(intact[-1]) + ' is intact' if intact else 'no earlier checkpoint'}"
    ) from None

  def _finish_on_exit(self) -> None:
    """The process ends (:func:`regnas_jax.stopping.exit_now`): let the save in flight end."""
    if self._mngr is not None:
      self._mngr.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict]:
    """``(state, extra)`` of ``step`` (default: the latest), shaped like ``target``."""
    ocp = _ocp()
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    where = f"checkpoint {self._join(str(step))}"
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001
      raise _Damaged(f"{where}: unreadable metadata ({_short(e)})") from None
    diff = difference(meta.get("identity", {}), self.identity) if isinstance(meta, dict) else "no meta"
    if diff:
      raise CheckpointError(f"{where} belongs to another run ({diff}); use another --workdir "
                            f"or remove that one")
    self.recorded_identity = meta["identity"]
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
      state = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001
      raise _Damaged(f"{where}: cannot restore the arrays ({_short(e)})") from None
    mism = [(jax.tree_util.keystr(p), a.shape, b.shape) for (p, a), b in zip(
        jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(target))
        if np.shape(a) != np.shape(b)]
    if mism:
      p, a, b = mism[0]
      raise CheckpointError(f"{where}: {p} has shape {a}, expected {b}")
    return state, meta.get("extra", {})

  def _steps_on_disk(self) -> list[int]:
    if not fs.isdir(self.directory):
      return []
    return sorted(int(d.name) for d in fs.path(self.directory).iterdir() if d.name.isdigit())

  def restore_latest(self, target: Any, warn: Callable[[str], None] = print):
    """``(state, extra, step)`` of the newest intact checkpoint, or ``(None, {}, None)`` when
    there is none.  A damaged newer step is moved aside with a warning (module docstring); a
    checkpoint of another run is an error (never skipped)."""
    self.wait()
    for step in reversed(self._steps_on_disk()):
      try:
        state, extra = self.restore(target, step)
        return state, extra, step
      except _Damaged as e:
        aside = self._join(f"damaged-{step}")
        self.close()
        if fs.is_writer():   # every process found it damaged; one moves it
          fs.path(self._join(str(step))).rename(aside)
        fs.barrier(f"moved {aside}")
        warn(f"warning: {e}; moved it to {aside} and resuming from the newest intact "
             f"checkpoint")
    return None, {}, None

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
      raise CheckpointError(f"checkpoint {self._join(str(step))}: cannot "
                            f"restore the arrays ({_short(e)})") from None

  def close(self) -> None:
    """Wait for the save in flight (raising its failure) and release orbax's resources."""
    if self._mngr is not None:
      try:
        self.wait()
      finally:
        self._mngr.close()
        self._mngr = None


class _Damaged(CheckpointError):
  """A checkpoint whose files cannot be read (as opposed to one of another run)."""


_OS_REASONS = ("No space left on device", "Read-only file system", "Permission denied",
               "Disk quota exceeded", "Not a directory")


def _reason(e: BaseException) -> str:
  """Why a save failed, in a few words: the operating system's reason when the (long) message
  of orbax's storage layer names one."""
  text = str(e)
  for r in _OS_REASONS:
    if r in text:
      return r.lower()
  return _short(e)


class _QuietForeignThreads:
  """``sys.stderr`` without what threads started outside Python write: after a failed save, the
  storage layer's own threads print a traceback per abandoned write (``RuntimeError: Event loop
  is closed``), even after ``save`` raised."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text):
    import threading
    if isinstance(threading.current_thread(), threading._DummyThread):  # noqa: SLF001
      return len(text)
    return self._stream.write(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax's writer threads report a failed write themselves (logging, and the exception left
  unhandled in the thread) before ``save`` raises it; the one line of :class:`CheckpointError`
  says it instead.  The callbacks of a failed save's storage writes can fire later, into orbax's
  closed event loop: :class:`_QuietForeignThreads` filters stderr during the save, and for good
  after a failed one."""
  import logging
  import sys
  import threading

  loggers = [logging.getLogger(n) for n in ("absl", "orbax")]
  old = [lg.level for lg in loggers]
  old_hook = threading.excepthook
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  threading.excepthook = lambda args: None
  old_err = sys.stderr
  if not isinstance(old_err, _QuietForeignThreads):
    sys.stderr = _QuietForeignThreads(old_err)
  saved = False
  try:
    yield
    saved = True
  finally:
    if saved:   # after a failed save its storage threads may still print: stderr stays filtered
      sys.stderr = old_err
    threading.excepthook = old_hook
    for lg, lvl in zip(loggers, old):
      lg.setLevel(lvl)


def _short(e: BaseException) -> str:
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  return (f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__)
