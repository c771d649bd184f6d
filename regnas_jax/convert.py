"""OFA's pretrained supernets in and out, from the command line (torch is not needed).

  python -m regnas_jax.convert ofa_mbv3 ofa_mbv3_d234_e346_k357_w1.0 runs/ofa_mbv3_w1.0
  python -m regnas_jax.convert ofa_mbv3 ofa_mbv3_d234_e346_k357_w1.2 runs/ofa_mbv3_w1.2
  python -m regnas_jax.convert ofa_resnet50 ofa_supernet_resnet50 runs/ofa_resnet50
  python -m regnas_jax.convert export runs/imagenet_ofa_mbv3/subnets/A2 A2.npz   # or A2.pth

``ofa_mbv3`` / ``ofa_resnet50`` convert an OFA checkpoint (a ``torch.save`` file as OFA's model
zoo downloads it) into OUT_DIR: an orbax checkpoint of the supernet's ``{'params',
'batch_stats'}`` plus ``ofa_import.json`` (space, source file and its SHA-256).  Give OUT_DIR
(or the checkpoint itself) as ``config.supernet.init_from`` to start a job from these weights.
The width multiplier and the number of classes are read off the checkpoint (``--width_mult``,
``--num_classes`` override them).

``export`` writes a subnet saved by a job (``subnets/<name>/``) as the state dict of the network
OFA's ``get_active_subnet()`` builds for it (OFA's key names and layouts; ``.npz``, or ``.pth``
when torch is installed) and the subnet in OFA's encoding next to it (``<OUT>.arch.json``,
for ``ofa_net.set_active_subnet(**arch)``).

Bad input prints one ``error:`` line and exits with status 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m regnas_jax.convert",
                              description="Convert OFA's supernets to regnas-jax and back.")
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
  s = sub.add_parser("export", help="write a saved subnet as OFA's state dict")
  s.add_argument("subnet_dir", help="a subnet directory written by a job (subnets/<name>/)")
  s.add_argument("out", help="output file, .npz (numpy) or .pth (needs torch)")
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


def export(subnet_dir: str, out: str) -> str:
  """Write the subnet saved in ``subnet_dir`` as OFA's state dict to ``out``."""
  from regnas_jax import export as export_lib
  from regnas_jax.checkpoint import CheckpointError
  from regnas_jax.io import ofa

  try:
    module, variables, arch, info = export_lib.load_subnet(subnet_dir)
  except CheckpointError as e:
    raise ofa.DataError(str(e)) from None
  from regnas_jax import spaces

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


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from regnas_jax.errors import RegnasError, one_line

  try:
    if args.command == "export":
      msg = export(args.subnet_dir, args.out)
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
