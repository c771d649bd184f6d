"""The project's error types: every fault a user can fix is a :class:`RegnasError`.

The command line prints such an error as one ``error: <message>`` line and exits with status 2;
anything else is a bug and keeps its traceback.  The message names what to change (a config key,
a file, a work dir), so subclasses exist only where a caller needs to tell faults apart:

* :class:`ConfigError` -- a configuration value that cannot run (the message names the key);
* :class:`DataError` -- a dataset or weights file (or setting) that cannot be loaded;
* :class:`StateError` -- a work dir whose saved state (checkpoint, search state, lock) cannot be
  used: damaged, written by another run, or held by a live process;
* :class:`SearchError` -- a search that cannot go on (e.g. no feasible architecture);
* :class:`InvalidArchError` / :class:`InvalidSpaceError` -- an architecture or a space
  configuration that does not belong to its search space.

This module imports nothing from the project: every layer may raise these.
"""

from __future__ import annotations


class RegnasError(Exception):
  """A fault the user can fix; the CLI prints its message as one line and exits with 2."""


class ConfigError(RegnasError, ValueError):
  """A configuration that cannot run; the message names the offending key."""


class DataError(RegnasError, ValueError):
  """A dataset or weights file that cannot be loaded; the message names the file or setting."""


class StateError(RegnasError, RuntimeError):
  """Saved state in a work dir that cannot be used; the message says which file and why."""


class SearchError(RegnasError, RuntimeError):
  """A search that cannot go on (e.g. no feasible architecture in the window)."""


class InvalidArchError(RegnasError, ValueError):
  """An architecture (arrays or JSON) that does not belong to its search space."""


class InvalidSpaceError(RegnasError, ValueError):
  """A search-space configuration that cannot be built."""


def one_line(e: BaseException) -> str:
  """The first non-empty line of an exception's message (its type name when empty)."""
  for ln in str(e).splitlines():
    if ln.strip():
      return ln.strip()
  return type(e).__name__
