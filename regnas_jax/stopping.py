"""Clean stops on SIGTERM: save at a safe point, then exit with status 143.

A long run is either *clean* (everything done so far is on disk: between saved training steps,
between search generations, while compiling) or *dirty* (steps done since the last save).
:class:`GracefulStop` installs a SIGTERM handler for its ``with`` block:

* while clean, SIGTERM ends the process at once (status 143, one ``stopped:`` line) -- even in
  the middle of an XLA compile, which can take minutes and would otherwise delay the handler:
  the signal also wakes a watcher thread through ``signal.set_wakeup_fd``;
* while dirty, it sets :attr:`GracefulStop.requested`; the loop saves at its next safe point and
  raises :class:`Preempted`, which the command line turns into status 143.

Resuming is the same command again.  Outside the main thread no handler is installed (no
graceful stop; the default SIGTERM behaviour applies).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_STATUS = 143   # 128 + SIGTERM, as a shell reports a process ended by it


class Preempted(Exception):
  """Raised at a safe point after SIGTERM, once the state is saved."""

  def __init__(self, what: str):
    super().__init__(f"stopped by SIGTERM {what}; run the same command again to resume")


_ON_EXIT: list = []


def on_exit(fn, remove: bool = False) -> None:
  """Run ``fn()`` in :func:`exit_now` before the process ends (e.g. release the work-dir lock);
  ``remove=True`` takes it off the list again."""
  if remove:
    if fn in _ON_EXIT:
      _ON_EXIT.remove(fn)
  else:
    _ON_EXIT.append(fn)


def exit_now(message: str, status: int = EXIT_STATUS) -> None:
  """Print ``message`` to stderr and end the process without interpreter teardown (background
  compile threads would otherwise abort the exit); the :func:`on_exit` callbacks run first."""
  try:
    for fn in reversed(_ON_EXIT):
      try:
        fn()
      except Exception:  # noqa: BLE001 - exiting anyway
        pass
    sys.stdout.flush()
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
  finally:
    os._exit(status)


class GracefulStop:
  """``with GracefulStop() as stop:`` -- see the module docstring.

  ``stop.dirty`` is set by the loop when it has work that is not saved yet and cleared after a
  save; ``stop.requested`` tells the loop to save and raise :class:`Preempted`.
  """

  _active: "GracefulStop | None" = None

  def __init__(self, clean_message: str = "stopped by SIGTERM with nothing unsaved; run the "
               "same command again to resume"):
    self.requested = False
    self._dirty = False
    self._lock = threading.Lock()
    self._message = clean_message
    self._old_handler = None
    self._old_fd = None
    self._pipe = None
    self._thread = None

  # -- the loop's side --------------------------------------------------------------------------
  @property
  def dirty(self) -> bool:
    return self._dirty

  @dirty.setter
  def dirty(self, value: bool) -> None:
    with self._lock:   # the watcher never exits between its check and a save that follows
      self._dirty = bool(value)

  # -- the signal's side ------------------------------------------------------------------------
  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    with self._lock:
      if not self._dirty:
        exit_now(self._message)

  def _watch(self):
    r = self._pipe[0]
    while True:
      try:
        data = os.read(r, 64)
      except OSError:
        return
      if not data or 0 in data:   # closed, or woken by __exit__
        return
      if signal.SIGTERM in data:
        self.requested = True
        with self._lock:
          if not self._dirty:
            exit_now(self._message)

  def __enter__(self):
    if GracefulStop._active is not None:   # nested: the outer block handles the signal
      return GracefulStop._active
    if threading.current_thread() is not threading.main_thread():
      return self
    try:
      self._old_handler = signal.signal(signal.SIGTERM, self._handle)
      self._pipe = os.pipe()
      os.set_blocking(self._pipe[1], False)
      self._old_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
    except (ValueError, OSError):   # no signals here (e.g. an embedded interpreter)
      return self
    self._thread = threading.Thread(target=self._watch, name="regnas-sigterm", daemon=True)
    self._thread.start()
    GracefulStop._active = self
    return self

  def __exit__(self, *exc):
    if GracefulStop._active is not self:
      return
    GracefulStop._active = None
    signal.set_wakeup_fd(self._old_fd if self._old_fd is not None else -1)
    signal.signal(signal.SIGTERM, self._old_handler or signal.SIG_DFL)
    try:
      os.write(self._pipe[1], b"\0")   # wake the watcher so that it ends
    except OSError:
      pass
    self._thread.join(timeout=1.0)
    for fd in self._pipe:
      try:
        os.close(fd)
      except OSError:
        pass


def current() -> GracefulStop | None:
  """The active :class:`GracefulStop` (the outermost ``with`` block), if any."""
  return GracefulStop._active


@contextlib.contextmanager
def critical(what: str = "writing its outputs"):
  """A block that SIGTERM must not cut short (e.g. writing several result files): a SIGTERM
  inside it ends the process right after it.  Without an active :class:`GracefulStop`, a
  plain block."""
  stop = current()
  if stop is None:
    yield
    return
  prev = stop.dirty
  stop.dirty = True
  try:
    yield
  finally:
    stop.dirty = prev
    if stop.requested and not prev:
      exit_now(f"stopped by SIGTERM after {what}; run the same command again to resume")
