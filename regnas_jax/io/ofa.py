"""OFA's pretrained supernets as our supernets' variables, and back.

OFA (``mit-han-lab/once-for-all``) publishes PyTorch checkpoints of its ``OFAMobileNetV3``
(``ofa_mbv3_d234_e346_k357_w1.0`` / ``_w1.2``) and ``OFAResNets`` (``ofa_resnet50``)
supernets as ``{"state_dict": ...}``.  This module maps them onto the variables of
:class:`regnas_jax.nn.OFAMobileNetV3` / :class:`regnas_jax.nn.OFAResNet50` (read with
:mod:`regnas_jax.io.torch_state`, no torch needed), maps an extracted subnet back to the state
dict of the static network OFA's ``get_active_subnet`` builds, and translates architectures
between OFA's encoding and the spaces'.

**Layouts.**  OFA stores convolutions as OIHW, we as HWIO (``w.transpose(2, 3, 1, 0)``; a
depthwise ``(C, 1, k, k)`` becomes ``(k, k, 1, C)``); OFA's SE and feature-mix layers are 1x1
convolutions ``(O, I, 1, 1)`` and its classifier a linear ``(O, I)``, ours are dense kernels
``(I, O)``.  BN ``weight``/``bias``/``running_mean``/``running_var`` become
``params/{scale, bias}`` and ``batch_stats/{mean, var}`` (both compute
``(x - mean) / sqrt(var + eps) * scale + bias`` in eval mode, eps 1e-5; PyTorch's BN momentum
0.1 is Flax's 0.9); ``num_batches_tracked`` is not used.  OFA's kernel-transform matrices
``7to5_matrix`` / ``5to3_matrix`` are copied as they are: OFA applies ``F.linear(taps,
M)``, i.e. ``M @ taps`` per channel over row-major flattened ``k x k`` taps, and so does
:func:`regnas_jax.nn.ops.elastic_kernels` on the HWIO kernel.

**Names.**  Keys are those of OFA's dynamic networks' ``state_dict()`` (e.g.
``blocks.3.conv.depth_conv.conv.conv.weight``); older checkpoints' aliases
(``mobile_inverted_conv``, un-nested ``bn.``/``conv.``/``linear.``) are accepted as OFA's own
``load_state_dict`` accepts them.  OFA's block ``k`` (``k >= 1``) of the MobileNetV3 supernet is
our ``space.blocks[k - 1]`` (stage-major, four per stage), block 0 is our fixed first block;
OFA-ResNet's block ``k`` is our ``space.blocks[k]`` and its ``input_stem.{0,1,2}`` our
``stem_{conv,bn}{1,2,3}``.

**Checks.**  A conversion uses every tensor of the checkpoint and fills every variable of the
supernet; the first tensor left over, the first variable missing and the first shape that does
not fit (both shapes named, in OFA's layout) are errors (:class:`DataError`, one line).  A
checkpoint of the other OFA space is recognised and named as such.

**Architectures.**  OFA-MobileNetV3: ``{"ks": 20 kernel sizes, "e": 20 expand ratios, "d": 5
depths}``; OFA-ResNet50: ``{"d": [stem, 4 stage depths], "e": 18 expand ratios, "w": 6 width
indices}``, where OFA runs the stem's middle layer iff ``d[0] == max(depth_list)`` (its sampler
draws ``d[0]`` from ``{min, max}``).  Both carry every block's choice, used or not, as do our
archs, so the translation is one to one; ``"r": [resolution]`` is added as OFA's tutorial
search does (``set_active_subnet`` ignores it).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import spaces
from regnas_jax.errors import DataError, InvalidArchError
from regnas_jax.io import torch_state
from regnas_jax.nn import ops
from regnas_jax.spaces import base

FAMILIES = {  # space name -> what OFA calls the network
    "ofa_mbv3": "OFA-MobileNetV3 (OFAMobileNetV3)",
    "ofa_resnet50": "OFA-ResNet50 (OFAResNets)",
    "ofa_proxyless": "OFA-ProxylessNAS (OFAProxylessNASNets)",
}
# OFA's released supernets (ofa/model_zoo.py): file name -> (space name, space settings).
RELEASED = {
    "ofa_mbv3_d234_e346_k357_w1.0": ("ofa_mbv3", dict(width_mult=1.0)),
    "ofa_mbv3_d234_e346_k357_w1.2": ("ofa_mbv3", dict(width_mult=1.2)),
    "ofa_supernet_resnet50": ("ofa_resnet50", dict(width_mult=1.0)),
}
FORMAT = "regnas-jax OFA import v1"
META_FILE = "ofa_import.json"


# ----------------------------------------------------------------------------------------------
# Layout transforms: OFA's array -> ours, ours -> OFA's
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
  """How an OFA tensor maps onto one of our variables."""
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_ofa: Callable[[np.ndarray], np.ndarray]


LAYOUTS = {
    "conv": Layout(lambda w: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1)),
    "conv1x1_dense": Layout(lambda w: w.reshape(w.shape[:2]).T, lambda w: w.T[:, :, None, None]),
    "linear": Layout(lambda w: w.T, lambda w: w.T),
    "copy": Layout(lambda w: w, lambda w: w),
}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One OFA tensor: its key, our variable (collection + path) and the layout between them."""
  key: str
  collection: str          # 'params' | 'batch_stats'
  path: tuple[str, ...]
  layout: str

  @property
  def where(self) -> str:
    return "/".join((self.collection,) + self.path)


def _conv(key: str, name: Sequence[str], layout: str = "conv") -> list[Entry]:
  return [Entry(key, "params", tuple(name) + ("kernel",), layout)]


def _bn(prefix: str, name: Sequence[str]) -> list[Entry]:
  name = tuple(name)
  return [Entry(f"{prefix}.weight", "params", name + ("scale",), "copy"),
          Entry(f"{prefix}.bias", "params", name + ("bias",), "copy"),
          Entry(f"{prefix}.running_mean", "batch_stats", name + ("mean",), "copy"),
          Entry(f"{prefix}.running_var", "batch_stats", name + ("var",), "copy")]


def _dense(prefix: str, name: Sequence[str], layout: str) -> list[Entry]:
  return (_conv(f"{prefix}.weight", name, layout)
          + [Entry(f"{prefix}.bias", "params", tuple(name) + ("bias",), "copy")])


# ----------------------------------------------------------------------------------------------
# Key plans: every OFA tensor of a network and where it goes
# ----------------------------------------------------------------------------------------------
def mbv3_plan(blocks: Sequence[tuple[int, str, bool]], dynamic: bool,
              matrices: Sequence[str] = ()) -> list[Entry]:
  """The tensors of an OFA MobileNetV3: the supernet (``dynamic``: OFA's dynamic layers nest
  one more ``conv``/``bn``; ``matrices`` are the kernel-transform names) or the static network
  of ``get_active_subnet``.  ``blocks``: ``(ofa_index, our_name, has_se)`` of the elastic
  blocks."""
  d = ".conv" if dynamic else ""
  dbn = ".bn" if dynamic else ""
  plan = (_conv("first_conv.conv.weight", ["stem_conv"]) + _bn("first_conv.bn", ["stem_bn"])
          + _conv("blocks.0.conv.depth_conv.conv.weight", ["first_dw"])
          + _bn("blocks.0.conv.depth_conv.bn", ["first_dw_bn"])
          + _conv("blocks.0.conv.point_linear.conv.weight", ["first_proj"])
          + _bn("blocks.0.conv.point_linear.bn", ["first_proj_bn"]))
  for idx, name, se in blocks:
    k = f"blocks.{idx}.conv"
    plan += _conv(f"{k}.inverted_bottleneck.conv{d}.weight", [name, "expand"])
    plan += _bn(f"{k}.inverted_bottleneck.bn{dbn}", [name, "expand_bn"])
    plan += _conv(f"{k}.depth_conv.conv{d}.weight", [name, "dw"])
    plan += [Entry(f"{k}.depth_conv.conv.{m}", "params", (name, "dw", m), "copy") for m in matrices]
    plan += _bn(f"{k}.depth_conv.bn{dbn}", [name, "dw_bn"])
    if se:
      for part in ("reduce", "expand"):
        plan += _dense(f"{k}.depth_conv.se.fc.{part}", [name, "se", part], "conv1x1_dense")
    plan += _conv(f"{k}.point_linear.conv{d}.weight", [name, "proj"])
    plan += _bn(f"{k}.point_linear.bn{dbn}", [name, "proj_bn"])
  plan += (_conv("final_expand_layer.conv.weight", ["head_conv"])
           + _bn("final_expand_layer.bn", ["head_bn"])
           + _conv("feature_mix_layer.conv.weight", ["feature_mix"], "conv1x1_dense")
           + _dense("classifier.linear", ["classifier"], "linear"))
  return plan


def resnet_plan(stem_middle: bool, blocks: Sequence[tuple[int, str, bool]],
                dynamic: bool) -> list[Entry]:
  """The tensors of an OFA ResNet: the supernet (``dynamic``) or the static network of
  ``get_active_subnet`` (its stem lists the middle layer only when it runs).  ``blocks``:
  ``(ofa_index, our_name, has_downsample_conv)``."""
  d = ".conv" if dynamic else ""
  dbn = ".bn" if dynamic else ""
  stem = [("stem_conv1", "stem_bn1", "input_stem.0")]
  if stem_middle:
    stem.append(("stem_conv2", "stem_bn2", "input_stem.1.conv"))
  stem.append(("stem_conv3", "stem_bn3", f"input_stem.{len(stem)}"))
  plan = []
  for conv, bn, k in stem:
    plan += _conv(f"{k}.conv{d}.weight", [conv]) + _bn(f"{k}.bn{dbn}", [bn])
  for idx, name, down in blocks:
    for j in (1, 2, 3):
      plan += _conv(f"blocks.{idx}.conv{j}.conv{d}.weight", [name, f"conv{j}"])
      plan += _bn(f"blocks.{idx}.conv{j}.bn{dbn}", [name, f"bn{j}"])
    if down:
      plan += _conv(f"blocks.{idx}.downsample.conv{d}.weight", [name, "down"])
      plan += _bn(f"blocks.{idx}.downsample.bn{dbn}", [name, "down_bn"])
  plan += _dense("classifier.linear" + (".linear" if dynamic else ""), ["classifier"], "linear")
  return plan


def supernet_plan(net) -> list[Entry]:
  """Every tensor of the OFA supernet matching ``net`` (an ``OFAMobileNetV3`` or
  ``OFAResNet50`` of ours), in OFA's ``state_dict`` order."""
  sp = net.space
  if sp.name == "ofa_mbv3":
    ks = sp.kernel_choices
    mats = ([ops.transform_matrix_name(a, b) for a, b in zip(ks[::-1], ks[-2::-1])][::-1]
            if net.kernel_transform else [])
    return mbv3_plan([(i + 1, b.name, b.se) for i, b in enumerate(sp.blocks)], True, mats)
  if sp.name == "ofa_resnet50":
    return resnet_plan(True, [(i, b.name, b.downsample) for i, b in enumerate(sp.blocks)], True)
  raise DataError(f"OFA weights exist for the spaces ofa_mbv3 and ofa_resnet50, not {sp.name!r}")


def subnet_plan(space, module) -> list[Entry]:
  """The tensors of the static network OFA's ``get_active_subnet`` builds for the exact-shape
  ``module`` (what ``net.exact_module(arch)`` returns): blocks numbered as they run."""
  if space.name == "ofa_mbv3":
    return mbv3_plan([(n + 1, s.name, s.se_ch > 0) for n, s in enumerate(module.blocks)], False)
  if space.name == "ofa_resnet50":
    return resnet_plan(module.stem_middle_layer,
                       [(n, s.name, s.downsample) for n, s in enumerate(module.blocks)], False)
  raise DataError(f"OFA weights exist for the spaces ofa_mbv3 and ofa_resnet50, not {space.name!r}")


# ----------------------------------------------------------------------------------------------
# Conversion with the every-tensor / every-variable check
# ----------------------------------------------------------------------------------------------
def _flatten(tree, prefix=()) -> dict[tuple, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def detect_family(state: Mapping[str, Any]) -> str | None:
  """Which OFA network a state dict belongs to (``'ofa_mbv3'``, ``'ofa_resnet50'``,
  ``'ofa_proxyless'``), by the names of its stem and head; None if none."""
  keys = set(state)
  if any(k.startswith("input_stem.") for k in keys):
    return "ofa_resnet50"
  if any(k.startswith("first_conv.") for k in keys):
    return "ofa_mbv3" if any(k.startswith("final_expand_layer.") for k in keys) else "ofa_proxyless"
  return None


def check_family(state: Mapping[str, Any], family: str, where: str) -> None:
  """Raise :class:`DataError` unless ``state`` is a checkpoint of the OFA network ``family``."""
  found = detect_family(state)
  if found == family:
    return
  if found is None:
    raise DataError(f"{where}: not a checkpoint of an OFA supernet (no tensor is named as in "
                    f"OFA's networks, e.g. {next(iter(state), '(empty)')!r})")
  hint = f"; convert it as {found}" if found in ("ofa_mbv3", "ofa_resnet50") else ""
  raise DataError(f"{where}: holds an {FAMILIES[found]} checkpoint, not {FAMILIES[family]}{hint}")


def _aliased(key: str, known: set) -> str:
  """``key`` as named in ``known``, applying the renames OFA's ``load_state_dict`` applies to
  older checkpoints (``mobile_inverted_conv`` -> ``conv``; un-nested dynamic layers)."""
  k = key.replace(".mobile_inverted_conv.", ".conv.")
  if k in known:
    return k
  for old, new in ((".linear.", ".linear.linear."), ("bn.", "bn.bn."),
                   ("conv.weight", "conv.conv.weight")):
    if old in k and k.replace(old, new) in known:
      return k.replace(old, new)
  return k


def _ofa_shape(entry: Entry, shape) -> tuple:
  """Our variable's shape as OFA lays the tensor out."""
  return tuple(LAYOUTS[entry.layout].to_ofa(np.broadcast_to(np.uint8(0), shape)).shape)


def apply_plan(state: Mapping[str, np.ndarray], plan: Sequence[Entry], target, family: str,
               where: str, what: str = "the supernet") -> dict:
  """Map ``state`` (OFA's key -> array) onto the variables shaped like ``target`` (a tree of
  arrays or ``ShapeDtypeStruct``s, ``{'params', 'batch_stats'}``, or a function returning one:
  it is called only once the names have been checked) following ``plan``.

  Raises :class:`DataError` naming the first problem: a checkpoint of another network, a
  tensor no variable takes, a tensor missing for a variable, a variable the plan does not
  fill, a shape that does not fit.
  """
  check_family(state, family, where)
  known = {e.key for e in plan}
  renamed = {}
  for k, v in state.items():
    k2 = _aliased(k, known)
    if k2 not in known:
      n = sum(_aliased(x, known) not in known for x in state)
      raise DataError(f"{where}: tensor {k} {tuple(np.shape(v))} has no place in {what} "
                      f"({n} such tensor{'s' if n > 1 else ''})")
    if k2 in renamed:
      raise DataError(f"{where}: tensors {renamed[k2][0]} and {k} are both {k2}")
    renamed[k2] = (k, v)
  missing = [e for e in plan if e.key not in renamed]
  if missing:
    e = missing[0]
    raise DataError(f"{where}: no tensor {e.key} for {e.where} of {what} "
                    f"({len(missing)} missing)")
  targets = _flatten(target() if callable(target) else target)
  planned = {(e.collection,) + e.path for e in plan}
  odd = [p for p in targets if p not in planned] + [p for p in planned if p not in targets]
  if odd:  # the plan and the module disagree: a bug, not a user error
    raise AssertionError(f"the OFA key plan and {what} disagree on {'/'.join(odd[0])}")
  out = {}
  for e in plan:
    src, arr = renamed[e.key]
    shape = tuple(targets[(e.collection,) + e.path].shape)
    want = _ofa_shape(e, shape)
    if tuple(arr.shape) != want:
      raise DataError(f"{where}: {src} has shape {tuple(arr.shape)}, {what} needs {want} for "
                      f"{e.where} (shapes in OFA's layout)")
    if not np.issubdtype(arr.dtype, np.floating) and arr.dtype.name != "bfloat16":
      raise DataError(f"{where}: {src} has dtype {arr.dtype}, expected floating point")
    out[(e.collection,) + e.path] = np.ascontiguousarray(
        LAYOUTS[e.layout].to_ours(np.asarray(arr, np.float32)))
  return _unflatten(out)


def abstract_variables(net) -> dict:
  """Shapes of ``net``'s variables (``jax.eval_shape`` of its init: nothing is computed).

  Cached per module configuration (tracing a supernet takes seconds); the resolutions of the
  space do not change the variables and are not part of the key.
  """
  sp = net.space
  return _abstract_variables(net.clone(space=dataclasses.replace(
      sp, resolutions=(min(sp.resolutions),))))


@functools.lru_cache(maxsize=16)
def _abstract_variables(net) -> dict:
  r = net.space.resolutions[0]
  return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, r, r, 3), jnp.float32),
                        net.space.max_arch())


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """The state dict of an OFA checkpoint file (``.pth``; ``{"state_dict": ...}`` unwrapped)."""
  return torch_state.load_state_dict(path)


def convert_state_dict(state: Mapping[str, np.ndarray], net, where: str = "checkpoint") -> dict:
  """``{'params', 'batch_stats'}`` (float32 numpy) of ``net`` from an OFA supernet state dict.

  ``net``: our ``OFAMobileNetV3`` (its ``kernel_transform`` decides whether the checkpoint's
  transform matrices are used; they must then be there) or ``OFAResNet50``.
  """
  return apply_plan(state, supernet_plan(net), lambda: abstract_variables(net), net.space.name,
                    where)


# ----------------------------------------------------------------------------------------------
# Subnets: export to (and import from) the state dict of OFA's get_active_subnet network
# ----------------------------------------------------------------------------------------------
def subnet_state_dict(space, module, variables) -> "collections.OrderedDict[str, np.ndarray]":
  """OFA's state dict of an exact-shape subnet: ``module``/``variables`` as
  ``net.extract(variables, arch)`` returns them.

  Keys and layouts are those of the static network OFA's ``get_active_subnet()`` builds for the
  same arch (``MobileNetV3`` / ``ResNets``), ``num_batches_tracked`` included (as 0), so
  ``ofa_net.get_active_subnet().load_state_dict(...)`` takes it.
  """
  flat = _flatten(variables)
  out = collections.OrderedDict()
  for e in subnet_plan(space, module):
    v = flat.get((e.collection,) + e.path)
    if v is None:
      raise DataError(f"subnet variables lack {e.where} (not the variables of this module?)")
    out[e.key] = np.ascontiguousarray(LAYOUTS[e.layout].to_ofa(np.asarray(v, np.float32)))
    if e.key.endswith(".running_var"):
      out[e.key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return out


def export_subnet(net, variables, arch) -> "collections.OrderedDict[str, np.ndarray]":
  """Extract ``arch`` from the supernet ``variables`` (its BN statistics may be re-calibrated
  ones) and return OFA's state dict of it (:func:`subnet_state_dict`)."""
  module, v = net.extract(variables, arch)
  return subnet_state_dict(net.space, module, jax.tree.map(np.asarray, v))


def import_subnet(net, arch, state: Mapping[str, np.ndarray], where: str = "state dict"):
  """``(module, variables)``: an exact-shape subnet of ``net`` from the state dict of OFA's
  ``get_active_subnet`` network for ``arch`` (the inverse of :func:`export_subnet`)."""
  module = net.exact_module(arch)
  r = min(net.space.resolutions)
  target = lambda: jax.eval_shape(module.init, jax.random.key(0),
                                  jnp.zeros((1, r, r, 3), jnp.float32))
  state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  return module, apply_plan(state, subnet_plan(net.space, module), target, net.space.name, where,
                            "the subnet")


def save_state_dict(path: str, state: Mapping[str, np.ndarray]) -> None:
  """Write a state dict as ``.npz`` (numpy, OFA's key names) or, if torch is installed, as a
  ``.pth`` holding ``{"state_dict": ...}`` like OFA's files.  Written next to ``path`` and
  renamed into place."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    tmp = path[:-4] + ".tmp.npz"
    np.savez(tmp, **state)
  elif path.endswith(".pth"):
    try:
      import torch
    except ImportError:
      raise DataError(f"{path}: writing a .pth needs torch (pip install torch); "
                      f"write a .npz instead") from None
    tmp = path + ".tmp"
    torch.save({"state_dict": collections.OrderedDict(
        (k, torch.from_numpy(np.array(v))) for k, v in state.items())}, tmp)
  else:
    raise DataError(f"{path}: give a file name ending in .npz or .pth")
  os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Architectures in OFA's encoding
# ----------------------------------------------------------------------------------------------
def _values(obj: Mapping, key: str, n: int) -> list:
  if key not in obj:
    raise InvalidArchError(f"OFA arch: no {key!r} (needs {n} values or one for all)")
  v = obj[key]
  if isinstance(v, (list, tuple)):
    if len(v) != n:
      raise InvalidArchError(f"OFA arch: {key} has {len(v)} values, expected {n}")
    return list(v)
  return [v] * n   # OFA's val2list: one value for every entry


def _index(v, choices, where: str) -> int:
  if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
    raise InvalidArchError(f"OFA arch: {where}: {v!r} is not a number")
  for i, c in enumerate(choices):
    if abs(float(v) - float(c)) <= 1e-6 * max(1.0, abs(float(c))):
      return i
  raise InvalidArchError(f"OFA arch: {where}: {v!r} is not one of "
                         f"{tuple(base.readable(c) for c in choices)}")


def _resolution(space, obj: Mapping, resolution) -> int:
  if resolution is None:
    r = obj.get("r", obj.get("image_size"))
    r = r[0] if isinstance(r, (list, tuple)) and len(r) == 1 else r
    if r is None:
      return len(space.resolutions) - 1
    resolution = r
  return _index(resolution, space.resolutions, "r")


def from_ofa_arch(space, obj: Mapping, resolution: int | None = None):
  """The space's arch for a subnet in OFA's encoding.

  ``obj``: ``{"ks", "e", "d"}`` (OFA-MobileNetV3) or ``{"d", "e", "w"}`` (OFA-ResNet50), as
  ``sample_active_subnet`` returns and ``set_active_subnet`` takes (a single value stands for
  every entry).  The resolution is ``resolution`` if given, else the arch's ``"r"`` (OFA's
  tutorial adds ``"r": [size]``), else the space's largest.  Errors
  (:class:`InvalidArchError`) name the entry.
  """
  if not isinstance(obj, Mapping):
    raise InvalidArchError(f"OFA arch: expected a mapping, got {type(obj).__name__}")
  expected = {"ofa_mbv3": {"ks", "e", "d"}, "ofa_resnet50": {"d", "e", "w"}}.get(space.name)
  if expected is None:
    raise InvalidArchError(f"OFA arch: the space {space.name!r} has no OFA encoding")
  extra = sorted(set(obj) - expected - {"r", "image_size"})
  if extra:
    raise InvalidArchError(f"OFA arch: unknown key {extra[0]!r} for {space.name} "
                           f"(expected {', '.join(sorted(expected))})")
  res = np.int32(_resolution(space, obj, resolution))
  n = space.num_blocks
  if space.name == "ofa_mbv3":
    idx = lambda key, m, ch: np.array([_index(v, ch, f"{key}[{i}]")
                                       for i, v in enumerate(_values(obj, key, m))], np.int32)
    return spaces.MBV3Arch(res, idx("d", 5, space.depth_choices),
                           idx("ks", n, space.kernel_choices), idx("e", n, space.expand_choices))
  d = _values(obj, "d", 5)
  dc = space.depth_choices
  stem = _index(d[0], dc, "d[0]")  # validates it
  depth = np.array([_index(v, dc, f"d[{i + 1}]") for i, v in enumerate(d[1:])], np.int32)
  expand = np.array([_index(v, space.expand_choices, f"e[{i}]")
                     for i, v in enumerate(_values(obj, "e", n))], np.int32)
  width = np.array([_index(v, range(len(space.width_choices)), f"w[{i}]")
                    for i, v in enumerate(_values(obj, "w", 6))], np.int32)
  return spaces.ResNetArch(res, np.int32(stem == len(dc) - 1), depth, expand, width)


def to_ofa_arch(space, arch) -> dict:
  """OFA's encoding of one arch (every block's choice, used or not), plus ``"r"``."""
  a = space.validate(arch, population=False)
  r = [int(space.resolutions[a.resolution])]
  val = lambda choices, idx: [base.readable(choices[i]) for i in np.asarray(idx).reshape(-1)]
  if space.name == "ofa_mbv3":
    return {"ks": val(space.kernel_choices, a.kernel), "e": val(space.expand_choices, a.expand),
            "d": val(space.depth_choices, a.depth), "r": r}
  if space.name == "ofa_resnet50":
    dc = space.depth_choices
    stem = dc[-1] if int(a.stem_depth) else dc[0]
    return {"d": [int(stem)] + val(dc, a.depth), "e": val(space.expand_choices, a.expand),
            "w": [int(w) for w in a.width], "r": r}
  raise InvalidArchError(f"OFA arch: the space {space.name!r} has no OFA encoding")


# ----------------------------------------------------------------------------------------------
# Spaces for checkpoints, converted directories, and the loader the jobs call
# ----------------------------------------------------------------------------------------------
def space_for_state_dict(family: str, state: Mapping[str, np.ndarray], where: str = "checkpoint",
                         **settings):
  """The space (``stem='imagenet'``, OFA's choice lists) an OFA checkpoint was trained for.

  ``num_classes`` is read off the classifier; ``width_mult`` is the one of OFA's released
  widths (MobileNetV3 1.0 or 1.2, ResNet50 1.0) whose widths match the checkpoint unless
  ``settings`` gives it.  Other ``settings`` (e.g. ``resolutions``) pass to the space.
  """
  if family not in ("ofa_mbv3", "ofa_resnet50"):
    raise DataError(f"unknown OFA network {family!r} (known: ofa_mbv3, ofa_resnet50)")
  check_family(state, family, where)
  cls = next((state[k] for k in ("classifier.linear.weight", "classifier.linear.linear.weight")
              if k in state), None)
  if cls is None or cls.ndim != 2:
    raise DataError(f"{where}: no classifier weight (classifier.linear.weight)")
  settings = dict(settings)
  settings.setdefault("num_classes", int(cls.shape[0]))
  space_cls = spaces.OFAMobileNetV3Space if family == "ofa_mbv3" else spaces.OFAResNet50Space
  if "width_mult" in settings:
    return space_cls(**settings)
  candidates = (1.0, 1.2) if family == "ofa_mbv3" else (1.0,)
  for w in candidates:
    sp = space_cls(width_mult=w, **settings)
    if _widths_match(sp, state):
      return sp
  raise DataError(f"{where}: its widths match none of OFA's released width multipliers "
                  f"{candidates}; give the width multiplier (--width_mult)")


def _widths_match(space, state) -> bool:
  """The stem's and the head's output channels of ``state`` are those of ``space``."""
  get = lambda *ks: next((state[k].shape[0] for k in ks if k in state), None)
  if space.name == "ofa_mbv3":
    w = space.widths
    return (get("first_conv.conv.weight"), get("final_expand_layer.conv.weight"),
            get("feature_mix_layer.conv.weight")) == (w[0], w[7], w[8])
  return (get("input_stem.2.conv.conv.weight", "input_stem.2.conv.weight"),
          get("blocks.0.conv3.conv.conv.weight", "blocks.0.conv3.conv.weight")) == (
              max(space.stem_choices[1]), max(space.stage_choices[0]))


def source_identity(path: str) -> dict:
  """What ``init_from`` names, as JSON for a job's checkpoint identity: the OFA file (name,
  size, SHA-256) behind a checkpoint file or a converted directory, so a work dir started from
  other weights can be told apart."""
  path = os.fspath(path)
  if os.path.isdir(path):
    src = read_converted_meta(path).get("source") or {}
    return {"kind": "converted", **src}
  if not os.path.isfile(path):
    raise DataError(f"{path}: no such file or directory")
  return {"kind": "file", "file": os.path.basename(path), "bytes": os.path.getsize(path),
          "sha256": _sha256(path)}


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _supernet_options(net) -> dict:
  return {"kernel_transform": bool(net.kernel_transform)} if net.space.name == "ofa_mbv3" else {}


def save_converted(directory: str, net, variables, source: str | None = None,
                   overwrite: bool = False) -> None:
  """Write converted variables as an orbax checkpoint plus ``ofa_import.json`` (the space, the
  supernet options, the source file and its SHA-256) to ``directory``.

  An existing ``directory`` is refused unless ``overwrite``; the directory is written next to
  its place and renamed into it, so nothing is left half-written.
  """
  from regnas_jax.checkpoint import _ocp  # orbax, imported only where checkpoints are written

  directory = os.path.abspath(directory)
  if os.path.exists(directory) and not overwrite and (not os.path.isdir(directory)
                                                      or os.listdir(directory)):
    raise DataError(f"{directory}: exists; choose another directory or pass --overwrite")
  meta = {"format": FORMAT, "space": net.space.config(), "supernet": _supernet_options(net),
          "source": None}
  if source:
    meta["source"] = {"file": os.path.basename(source), "bytes": os.path.getsize(source),
                      "sha256": _sha256(source)}
  tmp = directory + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with open(os.path.join(tmp, META_FILE), "w") as f:
    json.dump(meta, f, indent=1)
  ckptr = _ocp().StandardCheckpointer()
  ckptr.save(os.path.join(tmp, "variables"), jax.tree.map(np.asarray, variables))
  ckptr.wait_until_finished()
  old = directory + ".old"
  if os.path.exists(directory):
    os.replace(directory, old)
  os.replace(tmp, directory)
  shutil.rmtree(old, ignore_errors=True)


def read_converted_meta(directory: str) -> dict:
  path = os.path.join(directory, META_FILE)
  try:
    with open(path) as f:
      meta = json.load(f)
  except OSError as e:
    raise DataError(f"{directory}: not a converted OFA supernet (cannot read {META_FILE}: "
                    f"{e.strerror})") from None
  except ValueError as e:
    raise DataError(f"{path}: not JSON ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise DataError(f"{path}: not written by regnas_jax.convert (format {FORMAT!r})")
  return meta


def load_converted(directory: str, net) -> dict:
  """Variables of ``net`` from a directory written by :func:`save_converted`; the saved space
  must equal ``net.space`` except for its resolutions (weights do not depend on them)."""
  from regnas_jax.checkpoint import _ocp, _short
  from regnas_jax.identity import first_difference

  meta = read_converted_meta(directory)
  saved = {k: v for k, v in meta.get("space", {}).items() if k != "resolutions"}
  now = {k: v for k, v in net.space.config().items() if k != "resolutions"}
  diff = first_difference(saved, now) or first_difference(meta.get("supernet", {}),
                                                         _supernet_options(net))
  if diff:
    raise DataError(f"{directory}: converted for another supernet ({diff})")
  target = abstract_variables(net)
  try:
    v = _ocp().StandardCheckpointer().restore(
        os.path.join(os.path.abspath(directory), "variables"), target)
  except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged checkpoints
    raise DataError(f"{directory}: cannot restore the variables ({_short(e)})") from None
  got, want = _flatten(v), _flatten(target)
  for p, s in want.items():
    if p not in got or tuple(np.shape(got[p])) != tuple(s.shape):
      raise DataError(f"{directory}: {'/'.join(p)} has shape "
                      f"{tuple(np.shape(got[p])) if p in got else '(absent)'}, expected "
                      f"{tuple(s.shape)}")
  return jax.tree.map(np.asarray, v)


def load_supernet_variables(path: str, net) -> dict:
  """``{'params', 'batch_stats'}`` of ``net`` from OFA's weights: an OFA checkpoint file
  (``.pth``, converted now) or a directory written by ``python -m regnas_jax.convert``.

  This is what ``config.supernet.init_from`` names.  ``net`` is the job's supernet module
  (``OFAMobileNetV3`` or ``OFAResNet50``); any mismatch -- the other space, another width or
  number of classes, a damaged file -- is a :class:`DataError` with one line naming it.
  Arrays are float32 numpy, on the host.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    return load_converted(path, net)
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file or directory")
  return convert_state_dict(read_state_dict(path), net, where=path)
