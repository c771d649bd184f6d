"""Devices: the mesh a run uses, where its arrays live, and how several hosts join.

Everything here is ``jax.sharding``: one :class:`~jax.sharding.Mesh` with a single ``data`` axis
over the devices a run uses (``config.mesh``), and :class:`~jax.sharding.NamedSharding` s that say
where each array lives.  The compiled steps themselves do not change with the mesh: a training
batch sharded over ``data`` with replicated parameters makes the compiler insert the cross-device
reductions (the gradient mean, BatchNorm's batch moments), so a step on 8 devices computes what
the step on one computes, up to the order of float additions.

* **Training** (:func:`state_shardings`, :func:`put_batch`): batch split over ``data``;
  parameters and optimiser state replicated, or with ``config.mesh.params='fsdp'`` each large
  array split along its first dimension that the device count divides (ZeRO-3/FSDP style: the
  compiler gathers a weight where it is used and scatters its gradient).
* **Scoring** (:func:`member_sharding`, :func:`image_sharding`; ``regnas_jax.evaluate.Layout``):
  a block of ``P`` members split over ``data`` along ``P`` (architectures and per-member BN
  statistics; ``P`` rounded up to a multiple of the device count) when it has at least as many
  members as there are devices -- each device re-calibrates and scores its ``P/D`` members on
  every image -- otherwise the block is replicated and every image batch is split along its
  images: calibration ``(K, B, R, R, 3)`` along ``B`` (each BN batch moment is still over all
  ``B`` images: the compiler sums across the devices), evaluation ``(N, R, R, 3)`` along ``N``.
* **Several hosts** (:func:`initialize`): ``jax.distributed.initialize`` from ``config.mesh``
  or the environment (CPU devices talk through gloo); each process then passes its own slice of
  every global batch (:func:`process_slice`) and :func:`put_batch` assembles the global array.
  The trained variables come back to every host whole (:func:`host_values`); only process 0
  writes files (:func:`regnas_jax.fs.is_writer`), the others wait for it where they read them
  (:func:`regnas_jax.fs.barrier`), and orbax checkpoints are saved by all processes together.

The ``config.mesh`` section (all keys optional for older configs):

  devices      0: every device of every process; n: the first n devices (1 = one device)
  params       'replicate' | 'fsdp'
  fsdp_min_size  arrays with fewer elements stay replicated under 'fsdp'
  coordinator  'host:port' of process 0 for jax.distributed ('' = not distributed, unless the
               environment of a cluster jax.distributed recognises says otherwise)
  num_processes, process_id   for jax.distributed (-1: from the environment)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from regnas_jax.errors import ConfigError

AXIS = "data"
PARAM_MODES = ("replicate", "fsdp")
_DEFAULTS = dict(devices=0, params="replicate", fsdp_min_size=2 ** 16, coordinator="",
                 num_processes=-1, process_id=-1)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  devices: int = 0
  params: str = "replicate"
  fsdp_min_size: int = 2 ** 16
  coordinator: str = ""
  num_processes: int = -1
  process_id: int = -1


def mesh_config(cfg) -> MeshConfig:
  """``config.mesh`` checked (a config without the section gets the defaults)."""
  section = cfg.get("mesh") if hasattr(cfg, "get") else None
  given = dict(section.to_dict() if section is not None else {})
  unknown = sorted(set(given) - set(_DEFAULTS))
  if unknown:
    raise ConfigError(f"config.mesh.{unknown[0]}: unknown key (known: {', '.join(_DEFAULTS)})")
  mc = MeshConfig(**{**_DEFAULTS, **given})
  for k in ("devices", "fsdp_min_size"):
    v = getattr(mc, k)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ConfigError(f"config.mesh.{k}: must be an integer >= 0, got {v!r}")
  if mc.params not in PARAM_MODES:
    raise ConfigError(f"config.mesh.params: {mc.params!r} is not one of {PARAM_MODES}")
  for k in ("num_processes", "process_id"):
    v = getattr(mc, k)
    if isinstance(v, bool) or not isinstance(v, int) or v < -1:
      raise ConfigError(f"config.mesh.{k}: must be an integer >= -1, got {v!r}")
  if mc.coordinator and ":" not in mc.coordinator:
    raise ConfigError(f"config.mesh.coordinator: expected 'host:port', got {mc.coordinator!r}")
  return mc


_INITIALIZED = False


def initialize(mesh_config: MeshConfig, log=print) -> None:
  """Join the other processes of a multi-host run (once per process; before any device is
  touched).  Without ``coordinator`` this is a no-op unless a cluster environment that
  ``jax.distributed`` detects by itself (SLURM, Cloud TPU, ...) is indicated by
  ``REGNAS_DISTRIBUTED=1``."""
  global _INITIALIZED
  if _INITIALIZED:
    return
  kw = {}
  if mesh_config.coordinator:
    kw = dict(coordinator_address=mesh_config.coordinator)
    if mesh_config.num_processes >= 0:
      kw["num_processes"] = mesh_config.num_processes
    if mesh_config.process_id >= 0:
      kw["process_id"] = mesh_config.process_id
  elif os.environ.get("REGNAS_DISTRIBUTED") != "1":
    return
  if jax.config.jax_cpu_collectives_implementation in (None, "none"):
    # CPU devices of several processes need a collectives library for the cross-process
    # reductions of a step; gloo (over TCP) is jax's default since 0.5, not before.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kw)
  _INITIALIZED = True
  log(f"process {jax.process_index()}/{jax.process_count()}: {jax.local_device_count()} local "
      f"of {jax.device_count()} devices")


def make_mesh(mesh_config: MeshConfig | None = None) -> Mesh:
  """A one-axis (``data``) mesh over ``mesh_config.devices`` devices (0: all of them)."""
  mc = mesh_config or MeshConfig()
  devs = jax.devices()
  n = mc.devices or len(devs)
  if n > len(devs):
    raise ConfigError(f"config.mesh.devices: {n} asked for, {len(devs)} available "
                      f"({devs[0].platform})")
  if jax.process_count() > 1 and n != len(devs):
    raise ConfigError("config.mesh.devices: a multi-process run uses every device (set 0)")
  return Mesh(np.asarray(devs[:n]), (AXIS,))


def size(mesh: Mesh) -> int:
  return int(mesh.shape[AXIS])


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(AXIS))


member_sharding = batch_sharding   # a population's leading (member) axis
image_sharding = batch_sharding    # a batch of images


def _fsdp_spec(shape, n: int, min_size: int) -> P:
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for d, s in enumerate(shape):
    if s % n == 0:
      return P(*([None] * d + [AXIS]))
  return P()


def state_shardings(tree: Any, mesh: Mesh, mesh_config: MeshConfig | None = None) -> Any:
  """A ``NamedSharding`` per leaf of a training state: replicated, or (``params='fsdp'``) split
  along the first dimension the device count divides for arrays of ``fsdp_min_size`` elements
  or more.  Scalars and small arrays are always replicated."""
  mc = mesh_config or MeshConfig()
  n = size(mesh)

  def one(x):
    shape = np.shape(x)
    spec = _fsdp_spec(shape, n, mc.fsdp_min_size) if mc.params == "fsdp" else P()
    return NamedSharding(mesh, spec)

  return jax.tree.map(one, tree)


def place(tree: Any, shardings: Any) -> Any:
  """``tree`` as global arrays with ``shardings`` (host values are the same on every process)."""
  return jax.tree.map(lambda x, s: jax.make_array_from_callback(
      np.shape(x), s, lambda idx, x=x: np.asarray(x)[idx]), tree, shardings)


def host_values(tree: Any) -> Any:
  """``tree`` with every array that this process does not hold whole (a multi-process run's
  FSDP-split parameters) gathered into a numpy array of its global value, so that what reads
  values on the host (scoring, exports, fingerprints) sees the same arrays on every process.
  Arrays held whole (anything of a one-process run, replicated arrays) are returned as they
  are."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x

  return jax.tree.map(one, tree)


def process_slice(global_batch: int) -> slice:
  """This process's rows of a global batch of ``global_batch`` examples (contiguous, equal
  parts; together the processes cover the batch exactly once)."""
  n, i = jax.process_count(), jax.process_index()
  if global_batch % n:
    raise ConfigError(f"batch size {global_batch} is not divisible by the {n} processes")
  per = global_batch // n
  return slice(i * per, (i + 1) * per)


def check_batch(batch: int, mesh: Mesh, what: str) -> None:
  if batch % size(mesh):
    raise ConfigError(f"{what}: {batch} is not divisible by the {size(mesh)} devices of the "
                      f"mesh (config.mesh.devices)")


def put(tree: Any, sharding: NamedSharding) -> Any:
  """``tree`` (host or device arrays, the same global value on every process) laid out as
  ``sharding`` says: ``jax.device_put`` in one process, assembled from host copies in several."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)
  return place(tree, jax.tree.map(lambda _: sharding, tree))


def to_host(x) -> np.ndarray:
  """A global array as one numpy array on every process (gathered where this process does not
  hold all of it)."""
  if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def put_batch(local: Any, mesh: Mesh) -> Any:
  """Host arrays of this process's part of a batch -> global arrays split over ``data``."""
  s = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(s, np.asarray(x)), local)

