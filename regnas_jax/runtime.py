"""How a run uses its machine (``config.runtime``): settings that change no result.

* ``compilation_cache_dir``: XLA's persistent compilation cache (local or ``gs://``), set once
  at job start by :func:`setup`; a second run of the same programs loads them instead of
  compiling (programs that compiled in under ``compilation_cache_min_compile_s`` are not kept;
  JAX keys entries by the program, its compile options -- which name the cache directory -- and
  the JAX version, so a moved directory starts afresh and a stale entry is never used).
  On by default: ``'auto'`` is ``$REGNAS_JAX_CACHE_DIR`` when set, else the directory JAX's own
  ``JAX_COMPILATION_CACHE_DIR`` names (left as JAX set it up), else
  ``$XDG_CACHE_HOME/regnas-jax/xla`` (``~/.cache/regnas-jax/xla``); ``'off'`` (or ``''``)
  turns it off, as does ``REGNAS_JAX_CACHE_DIR=off``.  A directory that cannot be written is
  a warning and the run goes on without the cache (:func:`cache_dir`).
* ``xla_flags``: XLA flags the run adds to ``XLA_FLAGS`` before JAX starts its backend
  (:func:`apply_xla_flags`; a flag already in the environment keeps its value there), e.g. the
  digits default's ``--xla_llvm_disable_expensive_passes=true``: its programs are tiny and
  compile-bound, and compile faster without LLVM's expensive passes, to the same weights.
* ``tensorboard``: metrics also as TensorBoard events in ``<workdir>/tensorboard``
  (:class:`regnas_jax.progress.EventWriter`, no TensorFlow needed).
* ``profile_steps``: ``(start, stop)``, a ``jax.profiler`` trace of the training steps
  ``start .. stop - 1`` in ``<workdir>/profile`` (:class:`ProfileWindow`).

No saved state's identity reads this section, so a run may resume with other values.
:func:`run_metadata` describes the process (devices, versions, the code's git revision) for
``results.json``.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import time
from typing import Any, Callable

from regnas_jax import fs
from regnas_jax.errors import ConfigError

KEYS = ("compilation_cache_dir", "compilation_cache_min_compile_s", "xla_flags", "tensorboard",
        "profile_steps")


def settings(cfg) -> dict:
  """``config.runtime`` as a dict, with the defaults for a config without that section."""
  from regnas_jax.defaults import runtime_defaults

  out = runtime_defaults().to_dict()
  if "runtime" in cfg:
    out.update(cfg.runtime.to_dict())
  return out


def check(cfg) -> None:
  """Raise :class:`ConfigError` naming the first bad key of ``config.runtime``."""
  if "runtime" not in cfg:
    return
  rt = cfg.runtime.to_dict()
  unknown = sorted(set(rt) - set(KEYS))
  if unknown:
    raise ConfigError(f"config.runtime.{unknown[0]}: no such setting (known: {', '.join(KEYS)})")
  d = rt.get("compilation_cache_dir", "auto")
  if not isinstance(d, str):
    raise ConfigError(f"config.runtime.compilation_cache_dir: must be a path, 'auto' or 'off', "
                      f"got {d!r}")
  t = rt.get("compilation_cache_min_compile_s", 0.0)
  if isinstance(t, bool) or not isinstance(t, (int, float)) or not t >= 0:
    raise ConfigError(f"config.runtime.compilation_cache_min_compile_s: must be a number >= 0, "
                      f"got {t!r}")
  xf = rt.get("xla_flags", "")
  if not isinstance(xf, str) or not all(f.startswith("--xla_") for f in xf.split()):
    raise ConfigError(f"config.runtime.xla_flags: must be '' or XLA flags ('--xla_...=...' "
                      f"separated by spaces), got {xf!r}")
  if not isinstance(rt.get("tensorboard", False), bool):
    raise ConfigError(f"config.runtime.tensorboard: must be True or False, got "
                      f"{rt['tensorboard']!r}")
  ps = rt.get("profile_steps", ())
  ok = isinstance(ps, (tuple, list)) and (
      len(ps) == 0 or (len(ps) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                            for x in ps) and 0 <= ps[0] < ps[1]))
  if not ok:
    raise ConfigError(f"config.runtime.profile_steps: must be () or (start, stop) with "
                      f"0 <= start < stop, got {ps!r}")


CACHE_ENV = "REGNAS_JAX_CACHE_DIR"   # overrides the default cache directory ('off': none)
JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
OFF = ("off", "")


def default_cache_dir(environ=os.environ) -> str:
  """``$XDG_CACHE_HOME/regnas-jax/xla``, or ``~/.cache/regnas-jax/xla`` without it."""
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "regnas-jax", "xla")


def cache_dir(cfg, environ=os.environ) -> tuple[str | None, str]:
  """``(directory or None, where it comes from)`` of the compilation cache of ``cfg``.

  The sources, first that applies: ``'config'`` (``config.runtime.compilation_cache_dir`` a
  path), ``'off'`` (it, or ``$REGNAS_JAX_CACHE_DIR``, is ``'off'``/``''``), ``'env'``
  (``$REGNAS_JAX_CACHE_DIR``), ``'jax'`` (JAX's own ``$JAX_COMPILATION_CACHE_DIR``: JAX has set
  itself up from it, :func:`setup` leaves it so -- the test suite's per-run cache), ``'default'``
  (:func:`default_cache_dir`)."""
  d = settings(cfg)["compilation_cache_dir"]
  if d in OFF:
    return None, "off"
  if d != "auto":
    return d, "config"
  env = environ.get(CACHE_ENV)
  if env is not None:
    return (None, "off") if env.strip() in OFF else (env, "env")
  if environ.get(JAX_CACHE_ENV):
    return environ[JAX_CACHE_ENV], "jax"
  return default_cache_dir(environ), "default"


def _writable(d: str) -> str | None:
  """None when the local directory ``d`` exists (made if need be) and takes a file, else why
  not (os.access is no answer for root, nor on a read-only mount)."""
  try:
    os.makedirs(d, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=d, prefix=".probe-"):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  return None


def _backend_started() -> bool:
  """Whether JAX has started its backend in this process (then XLA has read ``XLA_FLAGS``)."""
  try:
    from jax._src import xla_bridge
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):   # another JAX version: assume not
    return False


def apply_xla_flags(cfg, log: Callable[[str], None] = print, environ=os.environ,
                    started: bool | None = None) -> list[str]:
  """Add the flags of ``config.runtime.xla_flags`` that ``XLA_FLAGS`` lacks (by name: one
  already there keeps its value) to it; returns the flags added.  Once JAX's backend has
  started (``started``, default: asked of JAX) XLA has read its flags: nothing is added, and a
  warning says so (the results are the same, compiles may be slower)."""
  have = environ.get("XLA_FLAGS", "").split()
  names = {f.split("=")[0] for f in have}
  missing = [f for f in settings(cfg)["xla_flags"].split() if f.split("=")[0] not in names]
  if not missing:
    return []
  if _backend_started() if started is None else started:
    log(f"warning: config.runtime.xla_flags: JAX has started its backend in this process, "
        f"{' '.join(missing)} not applied")
    return []
  environ["XLA_FLAGS"] = " ".join(have + missing)
  return missing


_CACHE: dict = {}


def setup(cfg, log: Callable[[str], None] = print, environ=os.environ) -> str | None:
  """Apply the process-wide settings of ``config.runtime`` before the first compile: the XLA
  flags (:func:`apply_xla_flags`) and the compilation cache (:func:`cache_dir`); returns the
  cache directory in use, or None.

  JAX reads the cache directory once, at its first compile: a later call with another
  directory keeps the first one and says so.  A local directory that cannot be created or
  written is a warning, and the run goes on without the cache."""
  import jax

  apply_xla_flags(cfg, log, environ)
  d, source = cache_dir(cfg, environ)
  if source in ("off", "jax"):
    return d
  if fs.is_local(d):
    d = os.path.abspath(os.path.expanduser(d))
  if _CACHE.get("dir") not in (None, d):
    log(f"warning: config.runtime.compilation_cache_dir: this process already uses "
        f"{_CACHE['dir']}; {d} is not used")
    return _CACHE["dir"]
  if fs.is_local(d):
    why = _writable(d)
    if why is not None:
      name = CACHE_ENV if source == "env" else "config.runtime.compilation_cache_dir"
      log(f"warning: the compilation cache {d} cannot be written ({why}); running without it "
          f"(set {name} to a writable directory, or 'off')")
      return None
  jax.config.update("jax_compilation_cache_dir", d)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(settings(cfg)["compilation_cache_min_compile_s"]))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _CACHE["dir"] = d
  return d


def tensorboard_dir(cfg, workdir: str) -> str | None:
  """Where the TensorBoard events of ``workdir`` go, or None when ``config.runtime`` says
  none."""
  return fs.join(workdir, "tensorboard") if settings(cfg)["tensorboard"] else None


class ProfileWindow:
  """A ``jax.profiler`` trace of steps ``start .. stop - 1`` (``config.runtime.profile_steps``)
  written to ``<workdir>/profile``: :meth:`before` starts it before step ``start`` runs,
  :meth:`after` stops it once step ``stop - 1`` is done (waiting for its results, so the
  trace holds the device work).  A window the run does not reach (e.g. a resumed run past it)
  traces nothing.  Every process traces (TensorBoard's profile plugin reads one file per
  host)."""

  def __init__(self, cfg, workdir: str, log: Callable[[str], None] = print):
    ps = tuple(settings(cfg)["profile_steps"])
    self.start, self.stop = ps if ps else (None, None)
    self.dir = fs.join(workdir, "profile")
    self.log = log
    self.active = False

  def before(self, s: int) -> None:
    if self.start is not None and s == self.start:
      import jax

      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, s: int, state: Any) -> None:
    """``s``: the steps done (the step just run is ``s - 1``)."""
    if self.active and s >= self.stop:
      import jax

      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.active = False
      self.log(f"profile of steps {self.start}..{self.stop - 1} written to {self.dir}")

  def close(self) -> None:
    if self.active:
      import jax

      jax.profiler.stop_trace()
      self.active = False


class CompileClock:
  """Splits the time of a loop's steps into compiling and running: a step that runs a program
  for the first time (:meth:`timed_first`) is compile-bound, so its time -- the compile plus
  one run, waited for -- is counted apart.  :meth:`take` returns ``(compile seconds, run
  seconds, items of the run steps)`` since the last call; ``spent_s`` and ``spent_steps`` are
  the compile-bound seconds and steps since the start (the progress bar's time left leaves them
  out).  ``clock``: the time source (seconds)."""

  def __init__(self, clock: Callable[[], float] = time.time):
    self.clock = clock
    self.compile_s, self.items, self.first_items, self.t0 = 0.0, 0, 0, clock()
    self.spent_s, self.spent_steps = 0.0, 0

  def timed_first(self, fn: Callable[[], Any], items: int) -> Any:
    """``(fn(), seconds)``: run ``fn()`` (a program's first call), wait for its results and
    count its time and ``items`` as compile."""
    import jax

    t = self.clock()
    out = jax.block_until_ready(fn())
    secs = self.clock() - t
    self.compile_s += secs
    self.first_items += items
    self.spent_s += secs
    self.spent_steps += 1
    return out, secs

  def count(self, items: int) -> None:
    self.items += items

  def take(self) -> tuple[float, float, int]:
    now = self.clock()
    total = now - self.t0
    out = (self.compile_s, max(total - self.compile_s, 0.0), self.items - self.first_items)
    self.compile_s, self.items, self.first_items, self.t0 = 0.0, 0, 0, now
    return out


# -- What results.json records about the process -----------------------------------------------
@functools.lru_cache(maxsize=1)
def code_revision() -> dict:
  """The git revision of the code (``{"git": sha, "dirty": bool}``) when it runs from a git
  checkout, else ``{"version": <package version>}``."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def git(*args):
    return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()

  try:
    if os.path.exists(os.path.join(root, ".git")):
      sha = git("rev-parse", "HEAD")
      dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
      return {"git": sha, "dirty": dirty}
  except (OSError, subprocess.SubprocessError):
    pass
  try:
    from importlib import metadata
    return {"version": metadata.version("regnas-jax")}
  except Exception:  # noqa: BLE001 - not installed either
    return {"version": "unknown"}


def run_metadata() -> dict:
  """Devices, processes, backend, library versions and the code's revision of this run."""
  import flax
  import jax

  try:
    import orbax.checkpoint as ocp
    orbax_version = getattr(ocp, "__version__", None)
  except ImportError:
    orbax_version = None
  devices = jax.devices()
  return {"backend": jax.default_backend(),
          "device_kind": devices[0].device_kind if devices else None,
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
          "process_count": jax.process_count(),
          "versions": {"jax": jax.__version__, "jaxlib": _jaxlib_version(),
                       "flax": flax.__version__, "orbax": orbax_version},
          "code": code_revision()}


def _jaxlib_version() -> str | None:
  try:
    import jaxlib
    return jaxlib.__version__
  except (ImportError, AttributeError):
    return None
