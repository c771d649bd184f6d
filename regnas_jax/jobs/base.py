"""The job contract: what ``run_search.py`` / ``regnas-search`` runs for a config.

A job turns a validated config into results in a work dir.  :func:`regnas_jax.jobs.run` does
everything jobs share -- checks the common config sections, builds the space, the supernet and
the dataset, takes the work-dir lock -- and hands a :class:`JobContext` to the job registered
for ``config.search.algorithm``.

What a new job must provide (subclass :class:`Job`, then :func:`register_job`):

* ``algorithms`` -- the values of ``config.search.algorithm`` it serves;
* ``check(cfg, space)`` -- raise :class:`~regnas_jax.errors.ConfigError` naming the first bad
  key of the sections only this job reads (``config.search`` mostly).  It runs before the
  dataset is loaded and before anything is written;
* ``run(ctx) -> dict`` -- train or load what it needs (:func:`regnas_jax.jobs.supernet.trained`
  trains the supernet with the shared resumable loop), search, and finish with
  :func:`write_results` so every job leaves the same kind of tail: ``results.json`` (with
  :func:`run_record`'s common part), ``results.md`` (printed too) and its plots.  Everything a
  job writes must resume: a killed job run again with the same command continues and ends with
  the same results.  Stop at ``ctx.stop_after == 'train'`` when asked.
"""

from __future__ import annotations

import abc
import dataclasses
import time
from typing import Any, Callable

import jax

from regnas_jax import fs, persist, report, runtime, stopping
from regnas_jax.errors import ConfigError
from regnas_jax.progress import EventWriter, MetricsLog, scalars_of

STAGES = ("train", "search")


def log_line(msg: str) -> None:
  """The jobs' status lines: ``[HH:MM:SS] message`` on stdout."""
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclasses.dataclass
class JobContext:
  """Everything a job's ``run`` gets: the validated config and what was built from it."""
  cfg: Any                  # ml_collections.ConfigDict (locked)
  workdir: str              # exists and is locked for this run
  space: Any                # regnas_jax.spaces.SearchSpace
  net: Any                  # the registered supernet module for ``space``
  dataset: Any              # regnas_jax.data.Dataset
  stop_after: str = "search"
  log: Callable[[str], None] = log_line
  mesh: Any = None          # the device mesh of ``config.mesh`` (built once by ``prepare``)

  def path(self, *parts: str) -> str:
    """A path inside the work dir (local or ``gs://``)."""
    return fs.join(self.workdir, *parts)


class Job(abc.ABC):
  """A job (module docstring): ``check`` the config, then ``run`` it."""

  algorithms: tuple = ()

  @abc.abstractmethod
  def check(self, cfg, space) -> None:
    """Raise :class:`ConfigError` naming the first bad key this job reads."""

  def check_data(self, cfg, space, dataset) -> None:
    """Checks that need the dataset (e.g. a batch larger than a split); before anything is
    written.  Default: none."""

  @abc.abstractmethod
  def run(self, ctx: JobContext) -> dict:
    """Run the job in ``ctx.workdir``; returns what it wrote to ``results.json``."""


JOBS: dict[str, Job] = {}   # config.search.algorithm -> job


def register_job(job: Job) -> Job:
  """Register ``job`` for each of its ``algorithms``."""
  if not isinstance(job, Job):
    raise TypeError(f"register_job: {job!r} is not a Job")
  if not job.algorithms:
    raise TypeError(f"register_job: {type(job).__name__} names no algorithm")
  for a in job.algorithms:
    JOBS[a] = job
  return job


def get_job(algorithm: str) -> Job:
  if algorithm not in JOBS:
    raise ConfigError(f"config.search.algorithm: {algorithm!r} is not one of {tuple(JOBS)}")
  return JOBS[algorithm]


def run_record(ctx: JobContext, macs_note: str, training=None, ends_ok=None) -> dict:
  """The part of ``results.json`` every job writes: config, space, versions, the run's machine
  and code (``run``: :func:`regnas_jax.runtime.run_metadata`), and (when given) the training
  summary and the test Top-1 of the largest and smallest subnets."""
  out = {"config": ctx.cfg.to_dict(), "space": ctx.space.config(), "jax": jax.__version__,
         "backend": jax.default_backend(), "run": runtime.run_metadata(), "macs_note": macs_note}
  if training is not None:
    out["training"] = {"steps": training.steps,
                       "seconds_this_process": round(training.seconds, 2),
                       "resumed_from": training.resumed_from,
                       "phases": [p.to_dict() for p in training.phases],
                       "fingerprint": training.fingerprint}
  if ends_ok is not None:
    out["test_top1"] = {"max": float(ends_ok[0].mean()), "min": float(ends_ok[1].mean())}
  return out


def write_results(ctx: JobContext, results: dict, table: str,
                  plots: dict[str, Callable[[str], None]] | None = None,
                  also: tuple[str, ...] = ()) -> None:
  """The tail every job ends with: plots (``name -> fn(path)``), ``results.md`` (the table,
  also printed), ``results.json`` (atomic), and one log line listing what was written; by the
  writer process only (:func:`regnas_jax.fs.is_writer`)."""
  plots = plots or {}
  if not fs.is_writer():   # the other processes of a multi-process run write nothing
    return
  with stopping.critical("writing the results"):
    for name, fn in plots.items():
      fn(ctx.path(name))
    fs.write_text(ctx.path("results.md"), table + "\n")
    persist.write_json(ctx.path("results.json"), results, indent=1)
  print(table)
  names = ["results.json", "results.md", *plots, *also]
  ctx.log(f"wrote {', '.join(names)} to {ctx.workdir}")


class SearchEvents:
  """A search's progress as TensorBoard scalars in ``<workdir>/tensorboard`` (a file of its own
  next to the training's) when ``config.runtime.tensorboard`` is on; otherwise, and in the
  processes other than the writer, :meth:`write` does nothing."""

  def __init__(self, ctx: JobContext):
    d = runtime.tensorboard_dir(ctx.cfg, ctx.workdir)
    self.writer = EventWriter(d, ".search") if d and fs.is_writer() else None

  def write(self, step: int, prefix: str, record: dict, skip: tuple = ("generation",)) -> None:
    """The numbers of ``record`` (:func:`~regnas_jax.progress.scalars_of`, less ``skip``) as
    ``<prefix>/<key>`` at ``step``."""
    if self.writer is not None:
      self.writer.write_scalars(int(step), {f"{prefix}/{k}": v for k, v in
                                            scalars_of(record).items() if k not in skip})

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def training_plot(ctx: JobContext, metrics_file: str = "metrics.jsonl") -> dict:
  """``{'training.png': fn}`` for :func:`write_results`: the training curves of the work dir's
  ``metrics_file`` (:func:`regnas_jax.report.plot_training`); nothing when it holds no record
  (e.g. imported weights, no training)."""
  records = MetricsLog(ctx.path(metrics_file)).read()
  if not records:
    return {}
  title = f"{ctx.cfg.name} ({ctx.dataset.name}): training"
  return {"training.png": lambda p: report.plot_training(p, records, title)}
