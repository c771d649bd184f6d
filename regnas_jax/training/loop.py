"""The one resumable loop behind supernet training and TuNAS's alternating search.

:func:`run_loop` calls ``step(s, state) -> (state, metrics)`` for ``s = start .. total - 1`` and
owns everything around it that a long run needs:

* **metrics**: every ``log_every`` steps (and at the end) the metrics of the steps since the last
  record are reduced by ``record(s, pending)`` into one JSON line of ``metrics.jsonl`` (or the
  TuNAS trajectory) and shown on the progress bar;
* **checkpoints** every ``checkpoint_every`` steps, at the end, wherever ``must_save(s)`` says
  (e.g. a phase end) and on SIGTERM (:mod:`regnas_jax.stopping`): with steps done since the
  last save, the loop saves after the current step and raises
  :class:`~regnas_jax.stopping.Preempted`; with none (e.g. during the first compile) the
  process ends at once;
* **a finite-loss guard**: the loss of every step is checked before anything is saved; after
  more than ``max_nonfinite`` non-finite steps the run stops with a :class:`NonFiniteError`
  naming the step and the last checkpoint, which stays intact (a non-finite state is never
  saved).

Everything random in a step must be a function of ``(seed, s)`` (the callers derive keys with
:func:`step_key`), so a checkpoint needs only the arrays and the step: a run killed at any point
and started again ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import stopping
from regnas_jax.errors import RegnasError
from regnas_jax.progress import MetricsLog, Progress


class NonFiniteError(RegnasError, FloatingPointError):
  """Training produced a non-finite loss or parameters (e.g. a learning rate too large)."""


def step_key(base_key, step):
  """The key of global step ``step``: everything random in a step derives from it."""
  return jax.random.fold_in(base_key, step)


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _finite_tree(tree) -> bool:
  """True when every floating-point leaf of ``tree`` is finite.

  Leaves this process holds whole are checked on the host (checked on the device leaf by leaf,
  each leaf shape compiles programs of its own: ~10 s of a digits run's compile time); a tree
  with leaves sharded over other processes is checked in one compiled program."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
  if not leaves:
    return True
  if all(getattr(x, "is_fully_addressable", True) for x in leaves):
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
  return bool(jax.device_get(_all_finite(leaves)))


def run_loop(state, step: Callable[[int, Any], tuple[Any, dict]], *, start: int, total: int,
             checkpointer, metrics: MetricsLog, desc: str, record: Callable[[int, list], dict],
             bar_fields: Callable[[dict], dict] = lambda rec: {},
             save_extra: Callable[[int], dict] = lambda s: {},
             must_save: Callable[[int], bool] = lambda s: False,
             params_of: Callable[[Any], Any] = lambda st: st.params,
             checkpoint_every: int = 100, log_every: int = 10, progress_every: int = 50,
             max_nonfinite: int = 0, loss_key: str = "loss", lr_hint: str = "",
             profile=None, compile_clock=None):
  """Run steps ``start .. total - 1`` (module docstring); returns the final state.

  Args:
    state: the state after ``start`` steps (fresh or restored).
    step: ``(s, state) -> (state, metrics)``; ``metrics`` a dict of device scalars/arrays with
      at least ``loss_key``.
    checkpointer: a :class:`~regnas_jax.checkpoint.Checkpointer` (``save(step, state, extra)``).
    metrics: where ``record(s, pending)`` lines go; ``pending`` are the host copies of the
      metrics of the steps since the previous record.
    record: reduce pending metrics to one JSON-able dict (written after ``"step": s``).
    bar_fields: fields of a record shown on the progress bar.
    save_extra: JSON-able metadata saved with the checkpoint of step ``s``.
    must_save: extra steps after which to save and write a record (e.g. a phase end).
    params_of: the parameters of a state (checked for finiteness before a save).
    max_nonfinite: how many steps with a non-finite loss to tolerate (default 0).
    lr_hint: appended to the non-finite error (e.g. the learning rate in use).
    profile: a :class:`~regnas_jax.runtime.ProfileWindow` (``before(s)`` / ``after(s, state)``
      around each step), or None.
    compile_clock: the :class:`~regnas_jax.runtime.CompileClock` that ``step`` times its
      compile-bound steps with: the progress bar's time left leaves them out.
  Raises:
    Preempted: after SIGTERM, once the state is saved.
    NonFiniteError: too many non-finite steps, or non-finite parameters at a save.
  """
  guard = _FiniteGuard(checkpointer, max_nonfinite, loss_key, lr_hint)
  pending: list = []
  with stopping.GracefulStop() as stop, Progress(total, desc, start=start,
                                                 every=progress_every) as bar, \
      _profiling(profile):
    s = start
    while s < total:
      if profile is not None:
        profile.before(s)
      state, m = step(s, state)   # a SIGTERM while the first step after a save compiles or
      stop.dirty = True            # runs ends the process at once: nothing would be lost
      s += 1
      if profile is not None:
        profile.after(s, state)
      pending.append(m)
      if compile_clock is not None:
        bar.compiled(compile_clock.spent_s, compile_clock.spent_steps)
      save = s % checkpoint_every == 0 or s == total or must_save(s) or stop.requested
      if s % log_every == 0 or s == total or must_save(s):
        host = jax.device_get(pending)
        guard.check_losses(s, host)
        rec = record(s, host)
        metrics.write(dict(step=s, **rec))
        pending = []
        bar.update(s, **bar_fields(rec))
      else:
        bar.update(s)
      if save:
        guard.check_losses(s, jax.device_get(pending))
        guard.check_params(s, params_of(state))
        checkpointer.save(s, state, save_extra(s))
        guard.saved = s
        stop.dirty = False
        if stop.requested and s < total:
          raise stopping.Preempted(f"after step {s}; checkpoint saved in "
                                   f"{checkpointer.directory}")
    stop.dirty = False
  return state


@contextlib.contextmanager
def _profiling(profile):
  """Stops a trace the loop left running (an error inside the profiled window)."""
  try:
    yield
  finally:
    if profile is not None:
      profile.close()


class _FiniteGuard:
  """Counts non-finite losses (each step once) and refuses to save non-finite parameters."""

  def __init__(self, checkpointer, max_nonfinite, loss_key, lr_hint):
    self.ck, self.max, self.key, self.hint = checkpointer, max_nonfinite, loss_key, lr_hint
    self.count = 0
    self.seen = -1         # last step whose loss was checked
    self.saved = checkpointer.latest_step()

  def _last(self) -> str:
    where = self.ck.directory
    return (f"the last checkpoint is step {self.saved} in {where}" if self.saved is not None
            else f"no checkpoint was saved in {where}")

  def check_losses(self, s: int, host: list) -> None:
    first = s - len(host) + 1
    for i, m in enumerate(host):
      step = first + i
      if step <= self.seen:
        continue
      self.seen = step
      if not math.isfinite(float(np.asarray(m[self.key]).sum())):
        self.count += 1
        if self.count > self.max:
          raise NonFiniteError(
              f"training stopped: the loss is not finite at step {step} ({self.count} "
              f"non-finite step(s), config.train.max_nonfinite_steps={self.max}); "
              f"{self._last()}{self.hint}")

  def check_params(self, s: int, params) -> None:
    if not _finite_tree(params):
      raise NonFiniteError(f"training stopped: the parameters are not finite after step {s}; "
                           f"{self._last()}{self.hint}")
