"""Extracted subnets on disk: a directory loadable on its own, without the supernet.

Layout of ``<dir>``::

  subnet.json   space configuration, the architecture (readable JSON), supernet options
                (needed to rebuild the exact-shape module) and the metrics it was saved with
  variables/    orbax checkpoint of the exact-shape ``{'params', 'batch_stats'}``

``load_subnet(dir)`` returns ``(module, variables, arch, info)``; ``module.apply(variables,
images)`` gives the subnet's logits.

For deployment (``python -m regnas_jax.convert export``): :func:`inference_function` is the
subnet as one function of the images with its variables as constants, :func:`input_spec` its
input with a symbolic batch, :func:`stablehlo` its serialized ``jax.export.Exported`` (runs with
jax alone) and :func:`deployment_metadata` what a deployed file records about it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import fs, persist
from regnas_jax import nn as nets
from regnas_jax import spaces
from regnas_jax.checkpoint import CheckpointError, _ocp, _short

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DEPLOY_FORMAT = "regnas-jax deployment v1"
# Platforms a StableHLO export is lowered for (jax lowers for all of them on any machine; the
# artifact then runs on whichever the caller has).
STABLEHLO_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
PREPROCESSING = ("RGB images resized to resolution x resolution, pixel / 255, then (x - mean) "
                 "/ std per channel; NHWC float32")


def save_subnet(directory: str, space, arch, supernet_options: dict, variables,
                metrics: dict | None = None, data: dict | None = None) -> None:
  """Write an extracted subnet (``variables`` from ``net.extract``) to ``directory`` (local or
  ``gs://``); only by the writer process (:func:`regnas_jax.fs.is_writer`).

  ``data`` (:func:`data_info`: the dataset's name, normalisation and class names) is recorded
  as ``subnet.json``'s ``data``, where deployment exports read the input normalisation.

  The directory is replaced as a whole: written next to it, then renamed into place (on an
  object store the rename copies, so a reader may briefly see it incomplete there).
  """
  if not fs.is_writer():
    return
  directory = os.fspath(fs.path(directory))
  tmp = fs.path(directory + ".tmp")
  if tmp.exists():
    tmp.rmtree()
  tmp.mkdir(parents=True)
  opts = {k: v for k, v in supernet_options.items()}
  info = {"format": "regnas-jax subnet v1", "space": space.config(),
          "arch": space.arch_to_dict(arch), "summary": space.format(arch), "supernet": opts,
          "metrics": metrics or {}}
  if data is not None:
    info["data"] = data
  (tmp / "subnet.json").write_text(json.dumps(info, indent=1))
  ckptr = _writer_checkpointer()
  ckptr.save(tmp / "variables", jax.tree.map(np.asarray, variables))
  ckptr.wait_until_finished()
  old, target = fs.path(directory + ".old"), fs.path(directory)
  if old.exists():
    old.rmtree()
  if target.exists():
    target.rename(old)
  tmp.rename(target)
  if old.exists():
    old.rmtree()


def _writer_checkpointer():
  """An orbax checkpointer of this process alone: the other processes of a multi-process run do
  not take part in an export (no barrier to wait at)."""
  ocp = _ocp()
  opts = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                            active_processes={jax.process_index()})
  return ocp.StandardCheckpointer(multiprocessing_options=opts)


def load_subnet(directory: str) -> tuple[Any, Any, Any, dict]:
  """``(module, variables, arch, info)`` of a subnet saved by :func:`save_subnet`."""
  path = fs.join(directory, "subnet.json")
  info = persist.read_json(path, CheckpointError)
  try:
    cfg = dict(info["space"])
    space = spaces.get_space(cfg.pop("space"), **{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in cfg.items()})
    arch = space.arch_from_dict(info["arch"])
    opts = dict(info["supernet"])
    opts.pop("init_from", None)  # where the supernet's weights came from, not a module option
    opts["dtype"] = DTYPES[opts.get("dtype", "float32")]
    module = nets.build_supernet(space, **opts).exact_module(arch)
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: not a saved subnet ({type(e).__name__}: {e})") from None
  try:
    variables = _ocp().StandardCheckpointer().restore(fs.path(directory) / "variables")
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{directory}: cannot restore the variables ({_short(e)})") from None
  return module, variables, arch, info


# ----------------------------------------------------------------------------------------------
# Deployment: the subnet as one function of the images, its StableHLO and its metadata
# ----------------------------------------------------------------------------------------------
def data_info(dataset) -> dict:
  """What a deployed model needs of its dataset (a :class:`regnas_jax.data.Dataset`): ``{'dataset',
  'mean', 'std', 'class_names'}`` (mean/std per RGB channel of pixel / 255)."""
  return {"dataset": dataset.name, "mean": [float(v) for v in dataset.mean],
          "std": [float(v) for v in dataset.std],
          "class_names": [str(c) for c in dataset.class_names]}


def inference_function(module, variables):
  """``images (N, H, W, 3) float32 -> logits (N, classes) float32``: ``module`` in eval mode
  with ``variables`` closed over (they become the exported program's constants).

  Depthwise convolutions use XLA's grouped convolution (``depthwise_impl='xla'``): the same
  numbers as the CPU default (shifted multiply-adds, a ``lax.scan``), but one ``Conv`` with
  ``group=C`` in ONNX and one convolution in StableHLO.
  """
  if "depthwise_impl" in getattr(module, "__dataclass_fields__", {}):
    module = module.clone(depthwise_impl="xla")
  variables = jax.tree.map(jnp.asarray, variables)

  def logits(images):
    return module.apply(variables, images, train=False).astype(jnp.float32)

  return logits


def input_spec(resolution: int) -> jax.ShapeDtypeStruct:
  """``(batch, resolution, resolution, 3)`` float32 with ``batch`` symbolic (any N >= 1)."""
  (batch,) = jax.export.symbolic_shape("batch")
  return jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32)


def stablehlo(fn, spec: jax.ShapeDtypeStruct) -> bytes:
  """``fn`` exported with :func:`jax.export.export` for :data:`STABLEHLO_PLATFORMS` and
  serialized: ``jax.export.deserialize(data).call(images)`` runs it with jax alone."""
  return jax.export.export(jax.jit(fn), platforms=STABLEHLO_PLATFORMS)(spec).serialize()


def subnet_resolution(info: dict) -> int:
  """Input side of a saved subnet (``subnet.json``'s arch)."""
  return int(info["arch"]["resolution"])


def deployment_metadata(info: dict, name: str, data: dict | None = None) -> dict:
  """What a deployed file records: the arch, input and output, normalisation, class names and
  versions.  ``data`` (as :func:`data_info`) overrides ``info['data']``; without either the
  normalisation is ``None`` (unknown)."""
  from regnas_jax import __version__  # noqa: PLC0415 -- the package root imports this module

  data = {**(info.get("data") or {}), **(data or {})}
  r, classes = subnet_resolution(info), int(info["space"]["num_classes"])
  return {
      "format": DEPLOY_FORMAT, "name": name, "space": info["space"], "arch": info["arch"],
      "summary": info.get("summary", ""), "resolution": r, "num_classes": classes,
      "input": {"name": "images", "shape": ["batch", r, r, 3], "layout": "NHWC",
                "dtype": "float32", "preprocessing": PREPROCESSING},
      "output": {"name": "logits", "shape": ["batch", classes], "dtype": "float32"},
      "mean": data.get("mean"), "std": data.get("std"),
      "class_names": list(data.get("class_names") or []), "dataset": data.get("dataset"),
      "metrics": info.get("metrics", {}), "regnas_jax_version": __version__,
      "jax_version": jax.__version__}
