#!/usr/bin/env python
"""regnas-jax command line: run the main job of a config.

  python run_search.py                                       # offline default (digits)
  python run_search.py --config configs/digits_mbv3.py:smoke --workdir /tmp/run
  python run_search.py --config.score.population=32          # override any config value

Trains the supernet (resuming from the checkpoints in --workdir, default runs/<name>), then
writes metrics.jsonl, checkpoints/ and results.json there.  SIGTERM saves a checkpoint and
exits with status 143; running the same command again resumes.
Bad input prints one line starting with 'error:' and exits with status 2, before anything is
written.
"""

import os
import sys

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                              "digits_mbv3.py")


def _one_line(e: BaseException) -> str:
  """absl/ml_collections errors may carry a traceback: keep the head and the final line."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  if not lines:
    return type(e).__name__
  if len(lines) == 1:
    return lines[0]
  return f"{lines[0].split(': Error whilst')[0].rstrip(':')}: {lines[-1]}"


def parse(argv):
  """(config, workdir, stop_after) from the command line, or SystemExit(2) with one error line."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  try:
    cfg_flag = config_flags.DEFINE_config_file(
        "config", DEFAULT_CONFIG, "Config file (path[:variant]); override with --config.key=value.",
        flag_values=fv, lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<name>).",
                                  flag_values=fv)
    stop_after = flags.DEFINE_enum("stop_after", "search", ["train", "search"],
                                   "Last stage to run.", flag_values=fv)
    fv(argv)
    cfg = cfg_flag.value
    cfg.to_dict()  # a config file that failed to load raises here
  except (KeyError, AttributeError) as e:  # an override names a key the config lacks
    print(f"error: --config override: unknown config key {_one_line(e).strip(chr(34))}",
          file=sys.stderr)
    raise SystemExit(2) from None
  except (flags.Error, ValueError, TypeError, OSError, SyntaxError) as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    raise SystemExit(2) from None
  return cfg, workdir.value or os.path.join("runs", cfg.name), stop_after.value


def main(argv) -> int:
  cfg, workdir, stop_after = parse(argv)
  from regnas_jax import jobs, stopping  # after parsing: importing JAX takes a while
  from regnas_jax.errors import RegnasError

  try:
    jobs.run(cfg, workdir, stop_after)
  except RegnasError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # the file system's faults (read-only, disk full, ...): one line too
    where = f" {e.filename}" if e.filename else ""
    print(f"error: cannot use{where}: {e.strerror or e}", file=sys.stderr)
    return 2
  except stopping.Preempted as e:
    stopping.exit_now(str(e))  # no interpreter teardown: background compiles may run
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
