"""OFA's pretrained supernets in and out, and saved subnets out for deployment (ONNX, StableHLO),
from the command line (torch is not needed).

  python -m regnas_jax.convert ofa_mbv3 ofa_mbv3_d234_e346_k357_w1.0 runs/ofa_mbv3_w1.0
  python -m regnas_jax.convert ofa_mbv3 ofa_mbv3_d234_e346_k357_w1.2 runs/ofa_mbv3_w1.2
  python -m regnas_jax.convert ofa_resnet50 ofa_supernet_resnet50 runs/ofa_resnet50
  python -m regnas_jax.convert export runs/imagenet_ofa_mbv3/subnets/A2 A2.npz   # or A2.pth
  python -m regnas_jax.convert export runs/digits_mbv3/subnets/A2 A2.onnx        # ONNX
  python -m regnas_jax.convert export runs/digits_mbv3/subnets/A2 A2.stablehlo   # jax.export

``ofa_mbv3`` / ``ofa_resnet50`` convert an OFA checkpoint (a ``torch.save`` file as OFA's model
zoo downloads it) into OUT_DIR: an orbax checkpoint of the supernet's ``{'params',
'batch_stats'}`` plus ``ofa_import.json`` (space, source file and its SHA-256).  Give OUT_DIR
(or the checkpoint itself) as ``config.supernet.init_from`` to start a job from these weights.
The width multiplier and the number of classes are read off the checkpoint (``--width_mult``,
``--num_classes`` override them).

``export`` writes a subnet saved by a job (``subnets/<name>/``) as the state dict of the network
OFA's ``get_active_subnet()`` builds for it (OFA's key names and layouts; ``.npz``, or ``.pth``
when torch is installed) and the subnet in OFA's encoding next to it (``<OUT>.arch.json``,
for ``ofa_net.set_active_subnet(**arch)``).  To ``.onnx`` it writes an ONNX model (opset 17,
translated by :mod:`regnas_jax.io.onnx`; needs ``pip install "regnas-jax[onnx]"``), to
``.stablehlo`` a serialized ``jax.export.Exported`` (``jax.export.deserialize(data).call(images)``
runs it with jax alone) and its metadata as ``<OUT>.json``; ``--format`` names the format when
the suffix does not.  Both take NHWC float32 images normalised as in training, any batch size;
their metadata (arch, resolution, mean/std, class names, versions) is in the ONNX model's
``metadata_props`` and in the JSON.  Each is checked against the subnet in JAX before it is
written (:func:`write_deployment`).

Bad input prints one ``error:`` line and exits with status 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from regnas_jax.errors import ConfigError, DataError, RegnasError

SUFFIXES = {".npz": "ofa", ".pth": "ofa", ".onnx": "onnx", ".stablehlo": "stablehlo"}
DEPLOY_SUFFIXES = {"onnx": ".onnx", "stablehlo": ".stablehlo"}  # the formats jobs can write
ONNX_PACKAGES = ("onnx", "onnxruntime")
CHECK_IMAGES = 2      # random normalised images each export is checked on
CHECK_TOLERANCE = 1e-3  # largest relative error of an export's logits that is written


class ExportError(RegnasError, RuntimeError):
  """An export that cannot be written (a network this translator cannot express, a file that
  cannot be written, logits that disagree with the subnet's); nothing was written."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m regnas_jax.convert",
                              description="Convert OFA's supernets to regnas-jax and back; export "
                                          "saved subnets (OFA state dict, ONNX, StableHLO).")
  sub = p.add_subparsers(dest="command", required=True)
  for name, what in (("ofa_mbv3", "OFAMobileNetV3 (ofa_mbv3_d234_e346_k357_w1.0 / _w1.2)"),
                     ("ofa_resnet50", "OFAResNets (ofa_supernet_resnet50)")):
    s = sub.add_parser(name, help=f"convert a checkpoint of OFA's {what}")
    s.add_argument("checkpoint", help="OFA checkpoint file (torch.save, {'state_dict': ...})")
    s.add_argument("out_dir", help="directory to write (must not exist, or be empty)")
    s.add_argument("--width_mult", type=float, default=None,
                   help="width multiplier (default: read off the checkpoint)")
    s.add_argument("--num_classes", type=int, default=None,
                   help="classifier outputs (default: read off the checkpoint)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
  s = sub.add_parser("export", help="write a saved subnet as OFA's state dict, ONNX or StableHLO")
  s.add_argument("subnet_dir", help="a subnet directory written by a job (subnets/<name>/)")
  s.add_argument("out", help="output file: .npz (numpy) or .pth (needs torch): OFA's state dict; "
                             ".onnx: ONNX; .stablehlo: jax.export (with OUT.json)")
  s.add_argument("--format", default=None,
                 help=f"one of {', '.join(sorted(set(SUFFIXES.values())))} (default: from "
                      f"OUT's suffix)")
  s.add_argument("--mean", default=None,
                 help="input normalisation recorded with an ONNX/StableHLO export, per RGB "
                      "channel of pixel/255, e.g. 0.485,0.456,0.406 (default: subnet.json's)")
  s.add_argument("--std", default=None, help="likewise the per-channel std")
  return p


def convert(family: str, checkpoint: str, out_dir: str, width_mult=None, num_classes=None,
            overwrite: bool = False) -> str:
  """Convert ``checkpoint`` into ``out_dir``; returns a one-line summary."""
  from regnas_jax import nn as nets
  from regnas_jax.io import ofa

  settings = {k: v for k, v in (("width_mult", width_mult), ("num_classes", num_classes))
              if v is not None}
  if os.path.exists(out_dir) and not overwrite and (not os.path.isdir(out_dir)
                                                    or os.listdir(out_dir)):
    raise ofa.DataError(f"{out_dir}: exists; choose another directory or pass --overwrite")
  state = ofa.read_state_dict(checkpoint)
  space = ofa.space_for_state_dict(family, state, checkpoint, **settings)
  net = nets.build_supernet(space)
  variables = ofa.convert_state_dict(state, net, checkpoint)
  ofa.save_converted(out_dir, net, variables, source=checkpoint, overwrite=overwrite)
  n = sum(int(v.size) for v in state.values())
  return (f"converted {len(state)} tensors ({n / 1e6:.2f} M numbers) of {checkpoint} to "
          f"{out_dir}: space {space.name}, width_mult {space.width_mult:g}, "
          f"{space.num_classes} classes")


def export(subnet_dir: str, out: str, file_format: str | None = None, mean: str | None = None,
           std: str | None = None) -> str:
  """Write the subnet saved in ``subnet_dir`` to ``out`` in ``file_format`` (``'ofa'``,
  ``'onnx'`` or ``'stablehlo'``; default: from the suffix); ``mean``/``std``: ``'r,g,b'``
  normalisation to record with an ONNX/StableHLO export.  Returns what was written, one line."""
  file_format = output_format(out, file_format)
  if file_format == "ofa":
    return export_ofa(subnet_dir, out)
  data = {k: _channels(f"--{k}", v) for k, v in (("mean", mean), ("std", std)) if v is not None}
  if file_format == "onnx" and missing_onnx_packages():
    raise DataError(missing_onnx_packages())
  return "\n".join(write_deployment(subnet_dir, {file_format: out}, data))


def output_format(out: str, file_format: str | None) -> str:
  """``file_format`` checked, or the format ``out``'s suffix names."""
  known = sorted(set(SUFFIXES.values()))
  if file_format is None:
    file_format = SUFFIXES.get(os.path.splitext(out)[1].lower())
    if file_format is None:
      raise ConfigError(f"{out}: cannot tell the format from the suffix (.npz, .pth: OFA's state "
                        f"dict; .onnx; .stablehlo); or give --format ({', '.join(known)})")
  if file_format not in known:
    raise ConfigError(f"--format: unknown format {file_format!r} (known: {', '.join(known)})")
  return file_format


def _channels(flag: str, text: str) -> list[float]:
  try:
    vals = [float(v) for v in text.split(",")]
  except ValueError:
    vals = []
  if len(vals) != 3:
    raise ConfigError(f"{flag}: need three comma-separated numbers (R,G,B), got {text!r}")
  return vals


def missing_onnx_packages() -> str | None:
  """Why ONNX export cannot run here (a package missing), or ``None``."""
  import importlib

  missing = []
  for m in ONNX_PACKAGES:
    try:
      importlib.import_module(m)
    except ImportError:
      missing.append(m)
  if not missing:
    return None
  return (f"ONNX export needs {' and '.join(missing)} (not installed): "
          f'pip install "regnas-jax[onnx]"')


def export_ofa(subnet_dir: str, out: str) -> str:
  """Write the subnet saved in ``subnet_dir`` as OFA's state dict to ``out``."""
  from regnas_jax import spaces
  from regnas_jax.io import ofa

  module, variables, arch, info = _load(subnet_dir)
  cfg = dict(info["space"])
  space = spaces.get_space(cfg.pop("space"), **{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in cfg.items()})
  state = ofa.subnet_state_dict(space, module, variables)
  ofa_arch = ofa.to_ofa_arch(space, arch)
  ofa.save_state_dict(out, state)
  arch_path = os.path.splitext(out)[0] + ".arch.json"
  with open(arch_path, "w") as f:
    json.dump({"ofa_arch": ofa_arch, "space": space.config()}, f, indent=1)
  return f"wrote {len(state)} tensors to {out} and the OFA arch to {arch_path}: {ofa_arch}"


# ----------------------------------------------------------------------------------------------
# Deployment exports: ONNX and StableHLO, each checked against the subnet in JAX
# ----------------------------------------------------------------------------------------------
def _load(subnet_dir: str):
  """``load_subnet``, its faults as :class:`DataError` (one ``error:`` line)."""
  from regnas_jax import export as export_lib
  from regnas_jax.checkpoint import CheckpointError

  try:
    return export_lib.load_subnet(subnet_dir)
  except CheckpointError as e:
    raise DataError(str(e)) from None


def write_deployment(subnet_dir: str, outputs: dict[str, str],
                     data: dict | None = None) -> list[str]:
  """Write the subnet saved in ``subnet_dir`` in each format of ``outputs`` (``{'onnx': path,
  'stablehlo': path}``); ``data``: normalisation / class names (:func:`export.data_info`
  form) over ``subnet.json``'s.  Returns one line per file written.

  Every file is built and checked in memory first: its logits on :data:`CHECK_IMAGES` random
  normalised images must be within :data:`CHECK_TOLERANCE` (relative) of the saved subnet's in
  JAX, else :class:`ExportError` and nothing is written; then each file is replaced as a whole.
  """
  import jax

  from regnas_jax import export as export_lib
  from regnas_jax import fs

  module, variables, _, info = _load(subnet_dir)
  name = os.path.basename(os.path.normpath(os.fspath(subnet_dir)))
  meta = export_lib.deployment_metadata(info, name, data)
  r = meta["resolution"]
  images = np.asarray(jax.random.normal(jax.random.key(0), (CHECK_IMAGES, r, r, 3)), np.float32)
  ref = _reference(module, variables, images)
  fn, spec = export_lib.inference_function(module, variables), export_lib.input_spec(r)
  files, lines = {}, []
  for fmt, out in outputs.items():
    blobs, err = WRITERS[fmt](fn, spec, meta, images, ref, out)
    if not err <= CHECK_TOLERANCE:
      raise ExportError(f"{out}: the {fmt} export's logits differ from the subnet's (largest "
                        f"relative error {err:.3g} > {CHECK_TOLERANCE:g}); nothing written")
    files.update(blobs)
    lines.append(f"wrote {out} ({fmt}, {len(blobs[out]) / 1e6:.2f} MB; input images "
                 f"(batch, {r}, {r}, 3) NHWC float32; logits within {err:.1e} of the subnet's)")
  try:
    for path, blob in files.items():
      fs.write_bytes(path, blob)
  except OSError as e:
    raise ExportError(f"{e.filename or path}: cannot write ({e.strerror})") from None
  if meta["mean"] is None or meta["std"] is None:
    lines.append("note: the input normalisation is unknown (subnet.json has no data section) "
                 "and recorded as null; give --mean and --std to record it")
  return lines


def _reference(module, variables, images) -> np.ndarray:
  """The saved subnet's logits as it is (its own depthwise implementation), on the CPU at full
  float32 precision: the independent side of every export's check."""
  import jax

  cpu = jax.devices("cpu")[0]
  with jax.default_device(cpu), jax.default_matmul_precision("float32"):
    out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images)
  return np.asarray(out, np.float32)


def relative_error(out, ref) -> float:
  """``max |out - ref| / max |ref|`` (the logits' largest error relative to their scale)."""
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  if out.shape != ref.shape:
    return float("inf")
  return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


def _checked(meta: dict, err: float) -> dict:
  return {**meta, "check": {"images": CHECK_IMAGES, "max_relative_error": err,
                            "against": "the saved subnet's logits in JAX (float32, CPU)"}}


def _onnx_files(fn, spec, meta, images, ref, out):
  """``({out: model bytes}, error)``: the model translated, run by onnxruntime on ``images``."""
  import onnx
  import onnxruntime

  from regnas_jax.io import onnx as onnx_lib

  try:
    model = onnx_lib.to_onnx(fn, spec, graph_name=meta["name"] or "subnet",
                             doc=f"regnas-jax subnet {meta['summary']}")
  except onnx_lib.UnsupportedError as e:
    raise ExportError(f"{out}: cannot write ONNX: {e}") from None
  sess = onnxruntime.InferenceSession(model.SerializeToString(),
                                      providers=["CPUExecutionProvider"])
  err = relative_error(sess.run(None, {"images": images})[0], ref)
  onnx.helper.set_model_props(model, metadata_props(_checked(meta, err)))
  return {out: model.SerializeToString()}, err


def metadata_props(meta: dict) -> dict[str, str]:
  """``metadata_props`` of an ONNX model: each key of ``meta`` with its value as JSON
  (``json.loads`` reads every one back, strings included)."""
  return {k: json.dumps(v) for k, v in meta.items()}


def _stablehlo_files(fn, spec, meta, images, ref, out):
  """``({out: serialized Exported, out.json: metadata}, error)``; checked by deserializing
  and calling it as a user would."""
  import jax

  from regnas_jax import export as export_lib

  blob = export_lib.stablehlo(fn, spec)
  with jax.default_device(jax.devices("cpu")[0]):
    err = relative_error(jax.export.deserialize(bytearray(blob)).call(images), ref)
  sidecar = {**_checked(meta, err), "artifact": os.path.basename(out),
             "platforms": list(export_lib.STABLEHLO_PLATFORMS),
             "load": "jax.export.deserialize(open(path, 'rb').read()).call(images)"}
  return {out: blob, out + ".json": json.dumps(sidecar, indent=1).encode()}, err


WRITERS = {"onnx": _onnx_files, "stablehlo": _stablehlo_files}


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from regnas_jax.errors import RegnasError, one_line

  try:
    if args.command == "export":
      msg = export(args.subnet_dir, args.out, args.format, args.mean, args.std)
    else:
      msg = convert(args.command, args.checkpoint, args.out_dir, args.width_mult,
                    args.num_classes, args.overwrite)
  except RegnasError as e:
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
  print(msg)
  return 0


if __name__ == "__main__":
  sys.exit(main())
