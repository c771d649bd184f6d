"""What a run keeps in its work dir besides checkpoints: JSON state files and the work-dir lock.

* :func:`write_json` writes through a temporary file and a rename, so a crash never leaves half
  a file; :func:`read_state` reads a state file back and checks it belongs to the same run (an
  *identity*: a JSON value describing everything the state depends on, compared through
  :func:`regnas_jax.identity.difference`), naming the first difference otherwise.  Every
  resumable piece (search states, evaluation caches, the latency model) goes through these two.
* :class:`WorkdirLock` lets one run at a time use a work dir: ``<workdir>/.lock`` holds the
  owner's pid and host; a second run is refused with one line naming them, and a lock left by
  a process that died is taken over with a warning.

Paths may be local or ``gs://`` (:mod:`regnas_jax.fs`); only the writer process (process 0,
:func:`regnas_jax.fs.is_writer`) writes.

Faults become :class:`~regnas_jax.errors.StateError` with one-line messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from typing import Any, Callable

import numpy as np

from regnas_jax import fs
from regnas_jax.errors import StateError
from regnas_jax.identity import difference


def _json_default(x):
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  if isinstance(x, np.bool_):
    return bool(x)
  if isinstance(x, (np.ndarray, tuple)):
    return np.asarray(x).tolist()
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def jsonable(x: Any) -> Any:
  """``x`` as plain JSON values (tuples become lists, numpy scalars Python numbers)."""
  return json.loads(json.dumps(x, default=_json_default))


def fingerprint(x: Any) -> str:
  """A short stable hash of a JSON-able value (keys sorted)."""
  return hashlib.sha256(json.dumps(jsonable(x), sort_keys=True).encode()).hexdigest()[:16]


def array_fingerprint(tree) -> str:
  """A short hash of the bytes, shapes and dtypes of every array in a pytree (e.g. the trained
  weights a search scores with)."""
  import jax

  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def write_json(path: str, obj: Any, indent: int | None = None) -> None:
  """Write ``obj`` as JSON to ``path`` as a whole (:func:`regnas_jax.fs.write_bytes`: via
  ``path.tmp`` and a rename locally, one object write on ``gs://``); only by the writer
  process."""
  text = json.dumps(obj, indent=indent, default=_json_default)
  if fs.is_writer():
    fs.write_text(path, text)


def read_json(path: str, error: type[Exception] = StateError, where: str = "") -> Any:
  """The JSON value in the file ``path``; a file that cannot be read or is not JSON raises
  ``error`` with one line naming it (after ``where``, e.g. the config key that named it)."""
  name = f"{where}: {path}" if where else path
  try:
    return json.loads(fs.read_text(path))
  except OSError as e:
    raise error(f"{name}: cannot read ({e.strerror})") from None
  except ValueError as e:
    raise error(f"{name}: not JSON ({e})") from None


def read_state(path: str, identity: Any, parse: Callable[[dict], Any] | None = None, *,
               other_run: str = "error"):
  """The state saved in ``path`` by a run with the same ``identity``, or ``None`` if there is no
  such file.

  The file must be a JSON object ``{"identity": ..., ...}`` (what :func:`save_state` writes);
  ``parse(obj)`` turns it into the caller's state and may raise ``ValueError``/``KeyError``/
  ``TypeError`` for bad content.  The saved identity is compared by
  :func:`regnas_jax.identity.difference` (which reads the identities of earlier versions).
  Unreadable JSON, bad content or another run's identity raise :class:`StateError` naming the
  file and the first difference; the file is left untouched.
  With ``other_run='ignore'`` a file of another run reads as ``None`` (for caches that are
  simply recomputed, e.g. latency measurements for other settings).
  """
  fs.barrier(f"read {path}")   # a multi-process run: every process reads the same version
  text = error = None
  try:
    text = fs.read_text(path) if fs.exists(path) else None
  except OSError as e:
    error = e.strerror
  fs.barrier(f"read {path} done")
  if error is not None:
    raise StateError(f"{path}: cannot read the saved state ({error})")
  if text is None:
    return None
  try:
    saved = json.loads(text)
  except ValueError as e:
    raise StateError(f"{path}: damaged saved state, not JSON ({e}); remove it to start that "
                     f"stage again") from None
  if not isinstance(saved, dict) or "identity" not in saved:
    raise StateError(f"{path}: not a saved state of this project (no identity)")
  diff = difference(saved["identity"], jsonable(identity))
  if diff and other_run == "ignore":
    return None
  if diff:
    raise StateError(f"{path} belongs to another run ({diff}); use another --workdir or remove "
                     f"that file")
  if parse is None:
    return saved
  try:
    return parse(saved)
  except (ValueError, KeyError, TypeError, IndexError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise StateError(f"{path}: damaged saved state ({type(e).__name__}: {msg}); remove it to "
                     f"start that stage again") from None


def save_state(path: str, identity: Any, **content) -> None:
  """Write ``{"identity": identity, **content}`` atomically (read back by :func:`read_state`)."""
  write_json(path, {"identity": jsonable(identity), **content})


# ----------------------------------------------------------------------------------------------
# One run per work dir
# ----------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """An advisory lock on a work dir: ``<workdir>/.lock`` with the owner's pid, host and start.

  ``acquire()`` creates the lock file atomically (``O_EXCL``).  If it exists: a live owner on
  this host, or any owner on another host (whose liveness cannot be checked from here), is a
  :class:`StateError` naming it; an owner on this host whose process is gone left a stale lock,
  which is taken over with a warning through ``warn``.  ``release()`` removes the file if this
  process still owns it.  Use as a context manager.

  On an object store (``gs://``) there is no ``O_EXCL``: the lock is an object with the same
  record, written when none exists and read back, and taken only if the record read back is this
  process's (so of two runs racing for it at most one goes on, unless both write and read back
  within one object store round trip of each other).  The rest is as above.  A lock object on
  ``gs://`` is the simplest guard that needs no extra service (no lease, no generation
  preconditions, which etils does not expose); it catches what it is for, a second run started
  on a work dir in use.  Only the writer process (:func:`regnas_jax.fs.is_writer`) takes the
  lock: the other processes of a multi-process run share it.
  """

  NAME = ".lock"

  def __init__(self, workdir: str, warn: Callable[[str], None] = print):
    self.workdir = workdir
    self.path = fs.join(workdir, self.NAME)
    self.local = fs.is_local(workdir)
    self.warn = warn
    self.held = False

  def _record(self) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime(
        "%Y-%m-%d %H:%M:%S")}

  def _owner(self) -> dict:
    try:
      rec = json.loads(fs.read_text(self.path))
      return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
      return {}

  def _create(self) -> None:
    """Create the lock with this process's record; ``FileExistsError`` if there is one."""
    if self.local:
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
      with os.fdopen(fd, "w") as f:
        json.dump(self._record(), f)
      return
    if fs.exists(self.path):
      raise FileExistsError(self.path)
    rec = self._record()
    fs.write_text(self.path, json.dumps(rec))
    if self._owner() != rec:   # another run wrote its record meanwhile
      raise FileExistsError(self.path)

  def acquire(self) -> "WorkdirLock":
    if not fs.is_writer():
      return self
    for _ in range(3):
      try:
        self._create()
      except FileExistsError:
        if fs.isdir(self.path):
          raise StateError(f"{self.path}: expected the work-dir lock file, found a directory")
        owner = self._owner()
        pid, host = owner.get("pid"), owner.get("host")
        if host == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() \
            and not _alive(pid):
          self.warn(f"warning: {self.path}: taking over the lock of process {pid}, which is no "
                    f"longer running (started {owner.get('started', '?')})")
          fs.remove(self.path)
          continue
        if pid == os.getpid() and host == socket.gethostname():
          self.held = True
          return self
        who = (f"process {pid} on host {host} (started {owner.get('started', '?')})"
               if pid else "an unknown process (unreadable lock file)")
        raise StateError(f"{self.workdir}: work dir in use by {who}; wait for it to end, use "
                         f"another --workdir, or remove {self.path} if that run is dead")
      except OSError as e:
        raise StateError(f"--workdir: cannot write in {self.workdir} "
                         f"({e.strerror or e})") from None
      self.held = True
      return self
    raise StateError(f"{self.path}: could not take the work-dir lock")

  def release(self) -> None:
    if not self.held:
      return
    owner = self._owner()
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
      fs.remove(self.path)
    self.held = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
