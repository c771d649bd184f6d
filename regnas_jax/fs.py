"""Work-dir files on any file system (``etils.epath``): local paths and ``gs://`` alike.

Every file the project writes under a work dir goes through here or through ``epath.Path``:

* :func:`path` turns a string into an ``epath.Path`` (local, ``gs://``, ``s3://``, ...);
  :func:`is_local` tells the two kinds apart.
* :func:`write_bytes` / :func:`write_text` replace a file as a whole.  Locally through a
  temporary file and a rename, which POSIX makes atomic: a crash leaves the old file or the new
  one, never half of one.  On an object store (``gs://``) a write of one object is atomic by
  itself (readers see the old object or the new one), while a rename is a copy and a delete, so
  the object is written in place instead.  Appending is not possible there either: callers that
  append (metric logs) rewrite the whole object (:class:`regnas_jax.progress.MetricsLog`).
* :func:`is_writer` is the one predicate of multi-process runs: only process 0 writes results,
  plots, exports, logs and metrics.  Orbax checkpoints are written by every process together.
  :func:`barrier` is where the other processes read what process 0 wrote (a saved search
  state, an evaluation cache): all of them read the same version of the file.

This module imports nothing from the project but :mod:`~regnas_jax.errors`; JAX and etils are
imported on first use.
"""

from __future__ import annotations

import os
from typing import Any

SCHEMES = ("gs://", "s3://", "az://", "hf://")   # what etils.epath routes to a remote store


def is_local(p: Any) -> bool:
  """Whether ``p`` (a string or path) names a local file (not ``gs://...`` or another URI)."""
  return not os.fspath(p).startswith(SCHEMES)


def path(p: Any):
  """``p`` as an ``etils.epath.Path``; local paths are made absolute."""
  from etils import epath

  s = os.fspath(p)
  return epath.Path(os.path.abspath(s) if is_local(s) else s)


def join(p: Any, *parts: str) -> str:
  """``p/parts...`` as a string, for local paths and URIs alike."""
  return os.fspath(path(p).joinpath(*parts)) if not is_local(p) else os.path.join(p, *parts)


def is_writer() -> bool:
  """Whether this process writes the run's files: process 0 of a multi-process run (and the one
  process of a single-process run)."""
  import jax

  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Wait until every process of a multi-process run got here (a no-op with one process).

  Readers of a file that process 0 also writes call it before and after reading: before, so
  that process 0's earlier writes are complete; after, so that process 0 does not overwrite the
  file while another process still reads the older version.  All processes must call it with
  the same ``name`` in the same order (the code paths of a run are the same on every process).
  """
  import jax

  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def exists(p: Any) -> bool:
  return os.path.exists(p) if is_local(p) else path(p).exists()


def isdir(p: Any) -> bool:
  return os.path.isdir(p) if is_local(p) else path(p).is_dir()


def makedirs(p: Any) -> None:
  """Create directory ``p`` and its parents (a no-op on object stores, which have none)."""
  if is_local(p):
    os.makedirs(p, exist_ok=True)
  else:
    path(p).mkdir(parents=True, exist_ok=True)


def write_bytes(p: Any, data: bytes) -> None:
  """Replace the file ``p`` by ``data`` as a whole (module docstring: atomic where it can be)."""
  if not is_local(p):
    target = path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return
  p = os.fspath(p)
  os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
  tmp = p + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, p)


def write_text(p: Any, text: str) -> None:
  write_bytes(p, text.encode())


def read_bytes(p: Any) -> bytes:
  """The content of the file ``p`` (raises ``FileNotFoundError`` / ``OSError``)."""
  if is_local(p):
    with open(p, "rb") as f:
      return f.read()
  return path(p).read_bytes()


def read_text(p: Any) -> str:
  return read_bytes(p).decode()


def remove(p: Any) -> None:
  """Remove the file ``p`` if it exists."""
  try:
    if is_local(p):
      os.remove(p)
    else:
      path(p).unlink()
  except FileNotFoundError:
    pass
