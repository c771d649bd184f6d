"""regnas-jax command line: run the job of a config (train a supernet, then search it).

  regnas-search                                      # the offline default: digits_mbv3
  regnas-search --config digits_tunas:smoke          # a config shipped with regnas-jax [:variant]
  regnas-search --config my_config.py --workdir /tmp/run
  regnas-search --config.search.population_size=32   # override any value of the config
  regnas-search --flagfile=run.flags                 # flags from a file, one per line

'python run_search.py' in a source checkout is the same command.  The job trains the supernet
(resuming from the checkpoints in --workdir, default runs/<config.name>), then searches and writes
metrics.jsonl, checkpoints/ and results.json there.  SIGTERM saves a checkpoint and exits with
status 143; running the same command again resumes.  Bad input (a flag, a config file, a config
value) prints one line starting with 'error:' and exits with status 2, before anything is written.
"""

# Only absl and ml_collections are imported until the flags are valid: --help and bad flags
# answer without loading JAX.

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import traceback
from typing import Any, Callable

from absl import app, flags

from regnas_jax.errors import ConfigError, RegnasError, one_line

DEFAULT_CONFIG = "digits_mbv3"   # a config shipped in regnas_jax.configs (the offline default)
STAGES = ("train", "search")
_HELP = {"help": False, "helpshort": False, "h": False, "?": False, "helpfull": True}


# -- The job call ----------------------------------------------------------------------------------
def run_job(cfg, workdir: str, stop_after: str) -> None:
  """Runs the job of ``cfg`` in ``workdir`` up to ``stop_after`` (imports JAX)."""
  from regnas_jax import jobs
  jobs.run(cfg, workdir, stop_after=stop_after)


# -- Configs: a file path or the name of a config shipped with the package -----------------------
def configs_dir() -> str:
  """The folder of the configs shipped as ``regnas_jax.configs`` (``configs/`` in a checkout)."""
  try:
    from importlib import resources
    return str(resources.files("regnas_jax.configs"))
  except ModuleNotFoundError:  # a source checkout on sys.path that is not installed
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
  """Names of the configs shipped with the package (``--config NAME[:variant]``)."""
  return sorted(f[:-3] for f in os.listdir(configs_dir())
                if f.endswith(".py") and not f.startswith("_"))


def resolve_config(value: str) -> str:
  """``path[:variant]`` of a ``--config`` value: an existing file, else a shipped config's name.

  Raises ConfigError when it is neither.
  """
  path, sep, variant = value.partition(":")
  if os.path.isfile(path):
    return value
  name = path[:-3] if path.endswith(".py") else path
  if name and os.sep not in name and name in shipped_configs():
    return os.path.join(configs_dir(), name + ".py") + sep + variant
  raise ConfigError(f"--config={value}: no such file, nor a config shipped with regnas-jax "
                    f"({', '.join(shipped_configs())})")


def _config_args(argv: list[str]) -> list[int]:
  """Indices in ``argv`` of the ``--config`` values (``--config=X`` or ``--config X``)."""
  out = []
  for i, a in enumerate(argv[1:], 1):
    if a == "--":
      break
    if re.fullmatch(r"--?config=.*", a) or (re.fullmatch(r"--?config", a) and i + 1 < len(argv)):
      out.append(i if "=" in a else i + 1)
  return out


def _with_resolved_configs(argv: list[str]) -> tuple[list[str], str | None, str | None]:
  """``(argv, value, path)``: argv with every ``--config`` value resolved to a file, the last
  value as given and as resolved (None, None when --config is not given)."""
  argv, value, path = list(argv), None, None
  for i in _config_args(argv):
    head, eq, value = argv[i].partition("=") if argv[i].startswith("-") else ("", "", argv[i])
    path = resolve_config(value)
    argv[i] = head + eq + path
  return argv, value, path


# -- Errors while the flags are parsed: one line each --------------------------------------------
def _first_line(text) -> str:
  """The first non-empty line of ``str(text)`` (absl and ml_collections add tracebacks)."""
  lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
  return lines[0] if lines else ""


def _innermost(e: BaseException) -> BaseException:
  """The first exception of a chain: absl and ml_collections re-raise a config file's error as a
  ValueError with the traceback in its text."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  return e


def _same_file(a: str | None, b: str) -> bool:
  return bool(a) and os.path.exists(a) and os.path.samefile(a, b)


def _config_file_error(value: str, path: str, e: BaseException) -> str | None:
  """One line for an exception raised by the config file ``path`` itself, else None."""
  inner = _innermost(e)
  if isinstance(inner, SyntaxError) and _same_file(inner.filename, path):
    return f"--config={value}: SyntaxError: {inner.msg} ({path}, line {inner.lineno})"
  frames = [f for f in traceback.extract_tb(inner.__traceback__) if _same_file(f.filename, path)]
  if not frames:
    return None
  if type(inner) is ValueError or isinstance(inner, RegnasError):  # raised on purpose: a bad variant
    return f"--config={value}: {one_line(inner)}"
  return (f"--config={value}: {type(inner).__name__}: {one_line(inner)} "
          f"({path}, line {frames[-1].lineno})")


def _not_a_config(value: str, cfg) -> str | None:
  from ml_collections import ConfigDict
  if isinstance(cfg, ConfigDict):
    return None
  return (f"--config={value}: get_config() returned {type(cfg).__name__}, not an "
          f"ml_collections.ConfigDict")


def _config_problem(value: str, config_arg: str, argv: list[str]) -> str | None:
  """One line for what the config of ``config_arg`` lacks (``get_config``, a ConfigDict, a key
  that an override on ``argv`` names), loading it again; None when nothing is amiss."""
  from ml_collections import ConfigDict
  path = config_arg.split(":")[0]
  spec = importlib.util.spec_from_file_location("regnas_jax_cli_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    return f"--config={value}: {path} defines no get_config()"
  cfg = module.get_config(*config_arg.split(":", 1)[1:])   # as ml_collections calls it
  if _not_a_config(value, cfg):
    return _not_a_config(value, cfg)
  for a in argv[1:]:
    m = re.match(r"--?(?:no)?config\.([^=]+)", a)
    if not m:
      continue
    node, parts = cfg, m.group(1).split(".")
    for i, key in enumerate(parts):
      keys = list(node.keys()) if isinstance(node, (ConfigDict, dict)) else []
      if key not in keys:
        close = difflib.get_close_matches(key, keys, n=1)
        which = "" if i == len(parts) - 1 else f" {key!r}"
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"--config.{m.group(1)}: no such config key{which}{hint}"
      node = node[key]
  return None


def _parse_error(e: Exception, value: str, config_arg: str, argv: list[str]) -> str:
  """The one-line message of an exception raised while the flags (and the config) are parsed."""
  msg = _config_file_error(value, config_arg.split(":")[0], e)
  if msg is None:
    try:
      msg = _config_problem(value, config_arg, argv)
    except Exception:  # noqa: BLE001 - then the flag error itself says it best
      msg = None
  if msg is None:
    msg = _first_line(e.args[0] if isinstance(e, KeyError) and e.args else e)
  return msg or type(e).__name__


# -- Flags ---------------------------------------------------------------------------------------
def _define_flags(argv: list[str], fv: flags.FlagValues):
  """Defines --config, --workdir and --stop_after on ``fv``; returns their holders.  Without
  --config on ``argv`` the default config is loaded (and overridden) here."""
  from ml_collections import config_flags
  config = config_flags.DEFINE_config_file(
      "config", resolve_config(DEFAULT_CONFIG),
      f"Config: a file path[:variant], or the name[:variant] of a config shipped with regnas-jax "
      f"({', '.join(shipped_configs())}); default {DEFAULT_CONFIG}, the offline default. "
      f"Override any value with --config.<key>=<value>.",
      flag_values=fv, lock_config=True, sys_argv=argv)
  fv.register_key_flag_for_module(__name__, fv["config"])
  workdir = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config.name>); "
                                "the work dir of an interrupted run is resumed.", flag_values=fv)
  stop_after = flags.DEFINE_enum("stop_after", "search", list(STAGES),
                                 "Last stage to run: train (or resume training), or search.",
                                 flag_values=fv)
  return config, workdir, stop_after


def _help(argv: list[str]) -> bool | None:
  """None without a help flag on ``argv``; else True for --helpfull, False for --help."""
  for a in argv[1:]:
    if a == "--":
      break
    name = a.lstrip("-").split("=", 1)[0]
    if a.startswith("-") and name in _HELP:
      return _HELP[name]
  return None


def _print_help(fv: flags.FlagValues, full: bool) -> None:
  """The module's usage, then our flags (all flags with --helpfull)."""
  print(__doc__.rstrip())
  print("\nflags:")
  print(fv.get_help() if full else fv.module_help(__name__).strip().split("\n", 1)[1])
  print("  --flagfile: Read more flags from this file, one per line (may be repeated).")
  if not full:
    print("  --helpfull: Also list absl's own flags (logging, ...).")


def parse(argv: list[str], flag_values: flags.FlagValues | None = None):
  """``(config, workdir, stop_after)`` from the command line ``argv`` (program name first).

  Raises ConfigError with one line for bad input; prints the help and raises SystemExit(0) for
  --help / --helpfull.  ``flag_values`` defaults to absl's global flags.
  """
  fv = flags.FLAGS if flag_values is None else flag_values
  try:
    argv = fv.read_flags_from_files(argv, force_gnu=False)   # expands --flagfile
  except flags.Error as e:
    raise ConfigError(f"--flagfile: {_first_line(e).removeprefix('ERROR:: ')}") from None
  want_help = _help(argv)
  if want_help is not None:   # the flags as defined, without loading a config but the default
    _define_flags(argv[:1], fv)
    _print_help(fv, want_help)
    raise SystemExit(0)
  argv, value, config_arg = _with_resolved_configs(argv)
  if config_arg is None:
    value, config_arg = DEFAULT_CONFIG, resolve_config(DEFAULT_CONFIG)
  try:
    config, workdir, stop_after = _define_flags(argv, fv)
    fv(argv)
    cfg = config.value
  except Exception as e:  # noqa: BLE001 - a flag value or the user's config file
    raise ConfigError(_parse_error(e, value, config_arg, argv)) from None
  try:
    getattr(cfg, "to_dict", None)   # a config file that failed to load raises on any use
  except OSError as e:
    raise ConfigError(f"--config={value}: {_first_line(e.__cause__ or e)}") from None
  if _not_a_config(value, cfg):
    raise ConfigError(_not_a_config(value, cfg))
  if fv is flags.FLAGS and "verbosity" in fv and fv["verbosity"].using_default_value:
    fv.verbosity = -1  # WARNING: absl.app would raise logging to INFO (orbax logs every save)
  return cfg, workdir.value or os.path.join("runs", cfg.name), stop_after.value


# -- Entry point ---------------------------------------------------------------------------------
def _parse_or_exit(argv: list[str]):
  try:
    return parse(argv)
  except RegnasError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _main_with(job: Callable[[Any, str, str], None]):
  """absl's main function around ``job(cfg, workdir, stop_after)``: the one place where faults
  become one ``error:`` line and status 2, and SIGTERM becomes status 143.  Those exits skip the
  interpreter's teardown (:func:`stopping.exit_now`): a background compile still running (the
  scoring warm-up during training) would otherwise abort it."""
  def _main(args) -> int:
    cfg, workdir, stop_after = args
    from regnas_jax import stopping   # imports no JAX
    try:
      job(cfg, workdir, stop_after)
    except RegnasError as e:
      stopping.exit_now(f"error: {one_line(e)}", 2)
    except OSError as e:   # the file system's faults (read-only, disk full, ...): one line too
      where = f" {e.filename}" if e.filename else ""
      stopping.exit_now(f"error: cannot use{where}: {e.strerror or one_line(e)}", 2)
    except stopping.Preempted as e:
      stopping.exit_now(str(e))
    return 0
  return _main


def main(argv: list[str] | None = None,
         job: Callable[[Any, str, str], None] = run_job) -> None:
  """The ``regnas-search`` command (and ``python run_search.py``): exits with the job's status.

  ``job(cfg, workdir, stop_after)`` is what runs once the flags are valid (the experiments'
  commands pass their own).
  """
  app.run(_main_with(job), argv=sys.argv if argv is None else argv, flags_parser=_parse_or_exit)


if __name__ == "__main__":
  main()
