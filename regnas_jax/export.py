"""Extracted subnets on disk: a directory loadable on its own, without the supernet.

Layout of ``<dir>``::

  subnet.json   space configuration, the architecture (readable JSON), supernet options
                (needed to rebuild the exact-shape module) and the metrics it was saved with
  variables/    orbax checkpoint of the exact-shape ``{'params', 'batch_stats'}``

``load_subnet(dir)`` returns ``(module, variables, arch, info)``; ``module.apply(variables,
images)`` gives the subnet's logits.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import fs
from regnas_jax import nn as nets
from regnas_jax import spaces
from regnas_jax.checkpoint import CheckpointError, _ocp, _short

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def save_subnet(directory: str, space, arch, supernet_options: dict, variables,
                metrics: dict | None = None) -> None:
  """Write an extracted subnet (``variables`` from ``net.extract``) to ``directory`` (local or
  ``gs://``); only by the writer process (:func:`regnas_jax.fs.is_writer`).

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
  try:
    info = json.loads(fs.read_text(path))
  except OSError as e:
    raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
  except ValueError as e:
    raise CheckpointError(f"{path}: not JSON ({e})") from None
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
