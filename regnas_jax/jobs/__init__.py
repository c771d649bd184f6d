"""Jobs: what the command line runs for a config (the contract is :mod:`.base`).

``run(cfg, workdir)`` checks the config, builds the space, its supernet and the dataset (or takes
the one given as ``dataset=``, e.g. ``regnas_jax.data.from_arrays(...)``), takes the work-dir lock
and runs the job registered for ``config.search.algorithm``:

=====================  ===========================================================
``evolution``, ``random``  :mod:`.family` -- REG-NAS family search (and comparison mode)
``nsga2``              :mod:`.nsga2` -- SCARLET-NAS's multi-objective search
``tunas``              :mod:`.tunas` -- TuNAS's alternating REINFORCE search
=====================  ===========================================================

Nothing is written to the work dir before the whole config (and the dataset) checked out.
"""

from __future__ import annotations

from regnas_jax import fs, parallel, persist, runtime, stopping, training
from regnas_jax.errors import ConfigError, StateError
from regnas_jax.jobs import build, family, nsga2, supernet, tunas
from regnas_jax.jobs.base import (JOBS, STAGES, Job, JobContext, get_job, log_line,
                                  register_job, run_record, write_results)


def prepare(cfg, workdir: str, stop_after: str = "search", log=log_line, dataset=None):
  """``(job, JobContext)`` of a config: every check done, nothing written yet.  ``dataset``: a
  :class:`regnas_jax.data.Dataset` to run on instead of ``config.data``'s (the context's config
  then records it, :func:`build.with_given_dataset`)."""
  if stop_after not in STAGES:
    raise ConfigError(f"--stop_after: {stop_after!r} is not one of {STAGES}")
  job = get_job(cfg.search.algorithm)
  build.check_common(cfg, dataset_given=dataset is not None)
  runtime.check(cfg)
  mesh_cfg = parallel.mesh_config(cfg)
  runtime.setup(cfg, log)   # before the first compile (the compilation cache)
  parallel.initialize(mesh_cfg, log)   # a multi-host run: before any device is touched
  mesh = parallel.make_mesh(mesh_cfg)  # (checks config.mesh.devices)
  space = build.build_space(cfg)
  net = build.build_supernet(cfg, space)
  if cfg.train.method in training.METHODS and cfg.train.steps:   # 0 steps: imported weights as is
    training.supernet.check_schedule(cfg.train, net, space)
  job.check(cfg, space)
  given = dataset is not None
  dataset = build.load_dataset(cfg, space, dataset)
  if given:
    cfg = build.with_given_dataset(cfg, dataset)
  job.check_data(cfg, space, dataset)
  log(build.describe(space, dataset))
  return job, JobContext(cfg=cfg, workdir=workdir, space=space, net=net, dataset=dataset,
                         stop_after=stop_after, log=log, mesh=mesh)


def run(cfg, workdir: str, stop_after: str = "search", log=log_line, dataset=None) -> dict:
  """Run the job of ``cfg`` in ``workdir`` (created if needed; one run at a time), on
  ``config.data``'s dataset or on ``dataset`` (a :class:`regnas_jax.data.Dataset`, e.g. from
  ``data.from_arrays``; the work dir's identity then records its fingerprint).

  Raises :class:`~regnas_jax.errors.RegnasError` for anything the user can fix (one-line
  message) and :class:`~regnas_jax.stopping.Preempted` after a SIGTERM once the state is saved.
  """
  job, ctx = prepare(cfg, workdir, stop_after, log, dataset)
  try:
    if fs.is_writer():
      fs.makedirs(workdir)
  except (OSError, ImportError) as e:   # ImportError: fsspec lacks the URI's file system (gcsfs)
    raise StateError(f"--workdir: cannot create {workdir} "
                     f"({getattr(e, 'strerror', None) or e})") from None
  lock = persist.WorkdirLock(workdir, warn=log)
  with lock, stopping.GracefulStop():   # SIGTERM: exit 143 at a safe point, in every stage
    stopping.on_exit(lock.release)
    try:
      return job.run(ctx)
    finally:
      stopping.on_exit(lock.release, remove=True)


__all__ = ["JOBS", "Job", "JobContext", "STAGES", "build", "family", "get_job", "log_line",
           "nsga2", "prepare", "register_job", "run", "run_record", "supernet", "tunas",
           "write_results"]
