"""A JAX function of a conv net as an ONNX model, translated from its jaxpr (needs ``onnx`` only).

``to_onnx(fn, spec)`` traces ``fn`` once with :func:`jax.make_jaxpr` on ``spec`` (whose batch
dimension may be symbolic, ``jax.export.symbolic_shape``), folds every equation whose inputs
are all known (the weights, BN statistics, index tables) into initializers by evaluating it
(numpy for shape ops and float arithmetic, JAX itself for the rest), and writes each remaining
equation as ONNX operators (opset 17, IR version 8, so onnxruntime >= 1.13 and most mobile/edge
runtimes load it).  A symbolic batch becomes the
``dim_param`` of the graph's input and output.

Why a translator of our own rather than jax2onnx: jax2onnx 0.14-0.17 pin orbax-checkpoint below
0.11.37 while this library needs >= 0.12 (``pip`` cannot install both), and jax2onnx 0.17.1's
models of five of the six exact subnet kinds tried were rejected by onnxruntime (NHWC/NCHW shape
clashes at broadcast multiplies, a MaxPool it could not run).  The exact subnets need few
primitives (:data:`RULES`); anything else is :class:`UnsupportedError`, naming the primitive.

Layouts: JAX's convolutions and pools here are NHWC; ONNX's are NCHW, so each is wrapped in two
``Transpose`` nodes (onnxruntime's layout optimiser removes the pairs between consecutive convs).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jcore

OPSET = 17
IR_VERSION = 8
FOLD_MAX_ELEMENTS = 1 << 16  # a folded result larger than this (and than its inputs) stays an op
INT64_MAX = np.iinfo(np.int64).max

Value = Any  # np.ndarray (known at conversion) or str (the name of an ONNX tensor)


class UnsupportedError(ValueError):
  """A primitive (or a form of one) that has no ONNX translation here; the message names it."""


def _onnx():
  import onnx  # noqa: PLC0415 -- optional dependency, imported only when ONNX is asked for
  return onnx


def _static(shape) -> bool:
  return all(isinstance(d, (int, np.integer)) for d in shape)


class _Graph:
  """The ONNX nodes and initializers being built; values are numpy arrays or tensor names."""

  def __init__(self, input_name: str, batch_dim):
    self.onnx = _onnx()
    self.nodes, self.inits = [], []
    self.input_name, self.batch_dim = input_name, batch_dim
    self.count = itertools.count()
    self._batch = None

  def fresh(self, hint: str) -> str:
    return f"{hint}_{next(self.count)}"

  def name(self, v: Value) -> str:
    """The tensor name of ``v``; a known array becomes an initializer."""
    if isinstance(v, str):
      return v
    arr = np.asarray(v)
    n = self.fresh("const")
    self.inits.append(self.onnx.numpy_helper.from_array(arr, n))
    return n

  def node(self, op: str, inputs, **attrs) -> str:
    out = self.fresh(op.lower())
    self.nodes.append(self.onnx.helper.make_node(op, [self.name(i) for i in inputs], [out],
                                                 **attrs))
    return out

  def transpose(self, v: Value, perm) -> Value:
    perm = [int(p) for p in perm]
    if perm == sorted(perm):
      return v
    if not isinstance(v, str):
      return np.transpose(v, perm)
    return self.node("Transpose", [v], perm=perm)

  def dims(self, shape) -> Value:
    """``shape`` as an int64 vector; the symbolic batch dimension is read off the input."""
    if _static(shape):
      return np.asarray(shape, np.int64)
    parts = []
    for d in shape:
      if isinstance(d, (int, np.integer)):
        parts.append(np.asarray([d], np.int64))
      elif d == self.batch_dim:
        if self._batch is None:
          self._batch = self.node("Shape", [self.input_name], start=0, end=1)
        parts.append(self._batch)
      else:
        raise UnsupportedError(f"a shape with the symbolic dimension {d} (only the batch "
                               f"dimension {self.batch_dim} may be symbolic)")
    return self.node("Concat", parts, axis=0)


def reshape_target(shape) -> np.ndarray:
  """``Reshape``'s shape input: static sizes, -1 for the (one) symbolic size."""
  out = [d if isinstance(d, (int, np.integer)) else -1 for d in shape]
  if out.count(-1) > 1 or 0 in out:
    raise UnsupportedError(f"reshape to {tuple(shape)} (two symbolic sizes, or a zero size)")
  return np.asarray(out, np.int64)


# ----------------------------------------------------------------------------------------------
# Rules: one function per primitive, (graph, eqn, inputs) -> output values
# ----------------------------------------------------------------------------------------------
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "max": "Max", "min": "Min",
          "pow": "Pow", "gt": "Greater", "lt": "Less", "ge": "GreaterOrEqual",
          "le": "LessOrEqual", "eq": "Equal"}
UNARY = {"neg": "Neg", "exp": "Exp", "log": "Log", "tanh": "Tanh", "logistic": "Sigmoid",
         "sqrt": "Sqrt", "abs": "Abs", "floor": "Floor", "ceil": "Ceil", "erf": "Erf",
         "sign": "Sign", "copy": "Identity", "copy_p": "Identity"}


def _aval(v):
  return v.aval


def _rsqrt(g, eqn, x):
  return [g.node("Reciprocal", [g.node("Sqrt", [x[0]])])]


def _square(g, eqn, x):
  return [g.node("Mul", [x[0], x[0]])]


def _integer_pow(g, eqn, x):
  y = eqn.params["y"]
  if y == 2:
    return _square(g, eqn, x)
  return [g.node("Pow", [x[0], np.asarray(y, _aval(eqn.outvars[0]).dtype)])]


def _convert(g, eqn, x):
  dt = _onnx().helper.np_dtype_to_tensor_dtype(np.dtype(eqn.params["new_dtype"]))
  return [g.node("Cast", [x[0]], to=dt)]


def _reshape(g, eqn, x):
  if eqn.params.get("dimensions") is not None:
    raise UnsupportedError("reshape with dimensions (a transposing reshape)")
  return [g.node("Reshape", [x[0], reshape_target(eqn.params["new_sizes"])])]


def _squeeze(g, eqn, x):
  return [g.node("Squeeze", [x[0], np.asarray(eqn.params["dimensions"], np.int64)])]


def _broadcast_in_dim(g, eqn, x):
  """Insert size-1 axes (``Reshape``), then ``Expand`` only where a size really grows."""
  shape, bdims = eqn.params["shape"], eqn.params["broadcast_dimensions"]
  src = _aval(eqn.invars[0]).shape
  ones = [1] * len(shape)
  for i, d in enumerate(bdims):
    ones[d] = src[i]
  y = g.node("Reshape", [x[0], reshape_target(ones)]) if len(src) != len(shape) else x[0]
  if all(o is s or o == s for o, s in zip(ones, shape)):
    return [y]
  target = [1 if o is s or o == s else s for o, s in zip(ones, shape)]
  return [g.node("Expand", [y, g.dims(target)])]


def _transpose(g, eqn, x):
  return [g.transpose(x[0], eqn.params["permutation"])]


def _reduce(op: str):
  def rule(g, eqn, x):
    axes = np.asarray(eqn.params["axes"], np.int64)
    if op == "ReduceSum":  # opset 13+: axes as an input; the others keep the attribute to 17
      return [g.node(op, [x[0], axes], keepdims=0)]
    return [g.node(op, [x[0]], axes=[int(a) for a in axes], keepdims=0)]
  return rule


def _dot_general(g, eqn, x):
  """``MatMul`` for ``(..., K) @ (K, N)`` (dense layers, 1x1 convs); ``Einsum`` otherwise."""
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  nl, nr = len(_aval(eqn.invars[0]).shape), len(_aval(eqn.invars[1]).shape)
  if not lb and not rb and tuple(lc) == (nl - 1,) and nr == 2 and tuple(rc) in ((0,), (1,)):
    return [g.node("MatMul", [x[0], g.transpose(x[1], (1, 0) if tuple(rc) == (1,) else (0, 1))])]
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  lhs = [next(letters) for _ in range(nl)]
  rhs = [next(letters) for _ in range(nr)]
  for i, j in zip(list(lc) + list(lb), list(rc) + list(rb)):
    rhs[j] = lhs[i]
  out = ([lhs[i] for i in lb] + [lhs[i] for i in range(nl) if i not in lc and i not in lb]
         + [rhs[j] for j in range(nr) if j not in rc and j not in rb])
  eq = f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
  return [g.node("Einsum", [x[0], x[1]], equation=eq)]


def _conv(g, eqn, x):
  """``lax.conv_general_dilated`` as ``Conv`` (``feature_group_count`` -> ``group``, so a
  depthwise conv is a grouped ``Conv``), transposed into and out of NCHW / OIHW."""
  p = eqn.params
  if any(d != 1 for d in p["lhs_dilation"]) or p["batch_group_count"] != 1:
    raise UnsupportedError("conv_general_dilated with lhs_dilation or batch_group_count "
                           "(a transposed convolution)")
  lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
  w = g.transpose(x[1], rhs_spec)
  kernel = [int(_aval(eqn.invars[1]).shape[d]) for d in rhs_spec[2:]]
  pads = [int(lo) for lo, _ in p["padding"]] + [int(hi) for _, hi in p["padding"]]
  y = g.node("Conv", [g.transpose(x[0], lhs_spec), w], kernel_shape=kernel,
             strides=[int(s) for s in p["window_strides"]], pads=pads,
             dilations=[int(d) for d in p["rhs_dilation"]], group=int(p["feature_group_count"]))
  return [g.transpose(y, np.argsort(out_spec))]


def _max_pool(g, eqn, x):
  """``reduce_window_max`` over spatial axes as ``MaxPool`` (padding reads as -inf in both)."""
  p = eqn.params
  wd, ws, pad = p["window_dimensions"], p["window_strides"], p["padding"]
  if any(d != 1 for d in tuple(p["base_dilation"])):
    raise UnsupportedError("reduce_window_max with base_dilation")
  plain = [i for i in range(len(wd)) if wd[i] == 1 and ws[i] == 1 and tuple(pad[i]) == (0, 0)]
  spatial = [i for i in range(len(wd)) if i not in plain[:2]]
  if len(plain) < 2:
    raise UnsupportedError("reduce_window_max over all but fewer than two axes")
  perm = plain[:2] + spatial
  y = g.node("MaxPool", [g.transpose(x[0], perm)], kernel_shape=[int(wd[i]) for i in spatial],
             strides=[int(ws[i]) for i in spatial],
             pads=[int(pad[i][0]) for i in spatial] + [int(pad[i][1]) for i in spatial],
             dilations=[int(p["window_dilation"][i]) for i in spatial])
  return [g.transpose(y, np.argsort(perm))]


def _pad(g, eqn, x):
  cfg = eqn.params["padding_config"]
  if any(int(i) != 0 or int(lo) < 0 or int(hi) < 0 for lo, hi, i in cfg):
    raise UnsupportedError("pad with interior or negative padding")
  pads = np.asarray([int(lo) for lo, _, _ in cfg] + [int(hi) for _, hi, _ in cfg], np.int64)
  return [g.node("Pad", [x[0], pads, x[1]], mode="constant")]


def _concatenate(g, eqn, x):
  return [g.node("Concat", list(x), axis=int(eqn.params["dimension"]))]


def _select_n(g, eqn, x):
  if len(x) != 3:
    raise UnsupportedError("select_n with more than two cases")
  pred = x[0]
  if np.dtype(_aval(eqn.invars[0]).dtype) != np.bool_:
    pred = g.node("Cast", [pred], to=_onnx().TensorProto.BOOL)
  return [g.node("Where", [pred, x[2], x[1]])]


def _clamp(g, eqn, x):
  return [g.node("Min", [g.node("Max", [x[1], x[0]]), x[2]])]


def _slice(g, eqn, x):
  p = eqn.params
  shape = _aval(eqn.invars[0]).shape
  ends = [INT64_MAX if not isinstance(e, (int, np.integer)) and e == shape[i] else int(e)
          for i, e in enumerate(p["limit_indices"])]
  steps = p["strides"] or (1,) * len(ends)
  return [g.node("Slice", [x[0], np.asarray(p["start_indices"], np.int64),
                           np.asarray(ends, np.int64), np.arange(len(ends), dtype=np.int64),
                           np.asarray(steps, np.int64)])]


def _gather_slice(g, eqn, x):
  """A gather at one known start (``x[:, :k]`` on a symbolic batch) as ``Slice`` + ``Squeeze``;
  starts clamped into range as XLA's gather does."""
  dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
  shape = _aval(eqn.invars[0]).shape
  starts, ends, axes = [], [], []
  for k, d in enumerate(int(d) for d in dn.start_index_map):
    if not _static([shape[d], sizes[d]]):
      raise UnsupportedError("gather with a start on the symbolic dimension")
    st = int(np.clip(x[1][k], 0, shape[d] - sizes[d]))
    starts, ends, axes = starts + [st], ends + [st + int(sizes[d])], axes + [d]
  y = g.node("Slice", [x[0], np.asarray(starts, np.int64), np.asarray(ends, np.int64),
                       np.asarray(axes, np.int64)])
  if dn.collapsed_slice_dims:
    y = g.node("Squeeze", [y, np.asarray(dn.collapsed_slice_dims, np.int64)])
  return [y]


def _gather(g, eqn, x):
  """Whole-slice gathers (``x[:, rows, cols, :]`` with index tables) as ``GatherND``; a gather at
  one known start as :func:`_gather_slice`."""
  dn, sizes = eqn.params["dimension_numbers"], eqn.params["slice_sizes"]
  shape = _aval(eqn.invars[0]).shape
  if not isinstance(x[1], str) and np.ndim(x[1]) == 1 and not dn.operand_batching_dims:
    return _gather_slice(g, eqn, x)
  index_map = [int(d) for d in dn.start_index_map]
  rest = [i for i in range(len(shape)) if i not in index_map]
  if (dn.operand_batching_dims or sorted(dn.collapsed_slice_dims) != sorted(index_map)
      or any(sizes[i] != 1 for i in index_map) or any(sizes[i] != shape[i] for i in rest)):
    raise UnsupportedError(f"gather of this form ({dn}, slice sizes {sizes})")
  idx = x[1]
  if not isinstance(idx, str) and ((idx < 0).any() or any(
      (idx[..., k] >= shape[d]).any() for k, d in enumerate(index_map))):
    raise UnsupportedError("gather with out-of-bounds indices")
  y = g.node("GatherND", [g.transpose(x[0], index_map + rest),
                          g.node("Cast", [idx], to=_onnx().TensorProto.INT64)])
  n_batch = len(_aval(eqn.invars[1]).shape) - 1
  offset, it_b, it_r, perm = set(dn.offset_dims), iter(range(n_batch)), itertools.count(n_batch), []
  for pos in range(n_batch + len(rest)):
    perm.append(next(it_r) if pos in offset else next(it_b))
  return [g.transpose(y, perm)]


RULES: dict[str, Callable] = {
    **{k: (lambda op: lambda g, e, x: [g.node(op, list(x))])(v) for k, v in BINARY.items()},
    **{k: (lambda op: lambda g, e, x: [g.node(op, [x[0]])])(v) for k, v in UNARY.items()},
    "rsqrt": _rsqrt, "square": _square, "integer_pow": _integer_pow,
    "convert_element_type": _convert, "reshape": _reshape, "squeeze": _squeeze,
    "broadcast_in_dim": _broadcast_in_dim, "transpose": _transpose,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"), "dot_general": _dot_general,
    "conv_general_dilated": _conv, "reduce_window_max": _max_pool, "pad": _pad,
    "concatenate": _concatenate, "select_n": _select_n, "clamp": _clamp, "slice": _slice,
    "gather": _gather,
}
# Call-like primitives: their inner jaxpr is translated in place.
CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


# ----------------------------------------------------------------------------------------------
# The traversal and the model
# ----------------------------------------------------------------------------------------------
def _foldable(eqn, ins) -> bool:
  """All inputs known, the outputs static and not much larger than the inputs."""
  if any(isinstance(v, str) for v in ins):
    return False
  avals = [_aval(v) for v in eqn.outvars]
  if not all(_static(a.shape) for a in avals):
    return False
  biggest = max([np.size(v) for v in ins] + [1])
  return all(int(np.prod(a.shape)) <= max(biggest, FOLD_MAX_ELEMENTS) for a in avals)


def _np_broadcast(x, *, shape, broadcast_dimensions, **_):
  ones = [1] * len(shape)
  for i, d in enumerate(broadcast_dimensions):
    ones[d] = x.shape[i]
  return np.broadcast_to(x.reshape(ones), shape)


def _np_iota(*, dtype, shape, dimension, **_):
  idx = np.arange(shape[dimension], dtype=dtype)
  return np.broadcast_to(idx.reshape([-1 if i == dimension else 1 for i in range(len(shape))]),
                         shape)


# Folds done in numpy (JAX's eager evaluation compiles one program per op and shape, seconds
# for a network's BN folding).  Shape ops for any dtype; arithmetic only on floats, where IEEE
# float32 rounding is XLA's up to rsqrt's last bit.
NUMPY_SHAPE_FOLDS = {
    "reshape": lambda x, *, new_sizes, dimensions, **_: (
        x.reshape(new_sizes) if dimensions is None else None),
    "squeeze": lambda x, *, dimensions, **_: np.squeeze(x, tuple(dimensions)),
    "transpose": lambda x, *, permutation, **_: np.transpose(x, permutation),
    "convert_element_type": lambda x, *, new_dtype, **_: x.astype(new_dtype),
    "broadcast_in_dim": _np_broadcast, "iota": _np_iota,
    "concatenate": lambda *xs, dimension, **_: np.concatenate(xs, dimension),
}
NUMPY_FLOAT_FOLDS = {
    "add": lambda a, b, **_: a + b, "sub": lambda a, b, **_: a - b,
    "mul": lambda a, b, **_: a * b, "div": lambda a, b, **_: a / b,
    "max": lambda a, b, **_: np.maximum(a, b), "min": lambda a, b, **_: np.minimum(a, b),
    "neg": lambda x, **_: -x, "sqrt": lambda x, **_: np.sqrt(x),
    "rsqrt": lambda x, **_: 1 / np.sqrt(x), "integer_pow": lambda x, *, y, **_: x ** y,
}


def _fold(eqn, ins) -> list[np.ndarray]:
  """Evaluate ``eqn`` on known inputs: in numpy where :data:`NUMPY_SHAPE_FOLDS` /
  :data:`NUMPY_FLOAT_FOLDS` have it, else with JAX itself on the CPU."""
  name, (aval, *_) = eqn.primitive.name, [_aval(v) for v in eqn.outvars]
  fn = NUMPY_SHAPE_FOLDS.get(name)
  if fn is None and all(np.asarray(x).dtype.kind == "f" for x in ins):
    fn = NUMPY_FLOAT_FOLDS.get(name)
  out = None if fn is None else fn(*[np.asarray(x) for x in ins], **eqn.params)
  if out is not None and not eqn.primitive.multiple_results:
    return [np.array(out, dtype=aval.dtype)]
  with jax.default_device(jax.devices("cpu")[0]):
    out = eqn.primitive.bind(*ins, **eqn.params)
  out = out if eqn.primitive.multiple_results else [out]
  return [np.asarray(o) for o in out]


def _inner(eqn):
  """``(jaxpr, consts)`` of a call-like primitive's body."""
  body = eqn.params[CALLS[eqn.primitive.name]]
  if isinstance(body, jcore.ClosedJaxpr):
    return body.jaxpr, list(body.consts)
  return body, []


def _run(g: _Graph, jaxpr, invals) -> list[Value]:
  """Translate ``jaxpr`` on ``invals`` (its constvars, then its invars)."""
  env = {}

  def read(v):
    if isinstance(v, jcore.Literal):
      return np.asarray(v.val, dtype=_aval(v).dtype)
    return env[v]

  for v, x in zip(list(jaxpr.constvars) + list(jaxpr.invars), invals, strict=True):
    env[v] = x
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name in CALLS:
      body, consts = _inner(eqn)
      outs = _run(g, body, [np.asarray(c) for c in consts] + ins)
    elif _foldable(eqn, ins):
      outs = _fold(eqn, ins)
    elif name in RULES:
      outs = RULES[name](g, eqn, ins)
    else:
      raise UnsupportedError(f"no ONNX translation for the JAX primitive {name!r}")
    for v, o in zip(eqn.outvars, outs, strict=True):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _value_info(onnx, name: str, aval, batch_dim, batch_name: str):
  dims = [batch_name if not isinstance(d, (int, np.integer)) and d == batch_dim else int(d)
          for d in aval.shape]
  return onnx.helper.make_tensor_value_info(
      name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(aval.dtype)), dims)


def to_onnx(fn: Callable, spec: jax.ShapeDtypeStruct, *, input_name: str = "images",
            output_name: str = "logits", batch_name: str = "batch", graph_name: str = "model",
            metadata: dict[str, str] | None = None, doc: str = ""):
  """The ONNX ``ModelProto`` of ``fn`` (one array in, one array out) on inputs like ``spec``.

  Args:
    fn: a JAX function; its closed-over arrays (the weights) become initializers.
    spec: the input's shape and dtype; ``spec.shape[0]`` may be a symbolic dimension
      (``jax.export.symbolic_shape``), written as the ``dim_param`` ``batch_name``.
    metadata: ``metadata_props`` of the model (strings).
  Raises:
    UnsupportedError: ``fn`` uses a primitive (or a form of one) with no translation here.
  """
  onnx = _onnx()
  closed = jax.make_jaxpr(fn)(spec)
  batch_dim = spec.shape[0] if not _static(spec.shape[:1]) else None
  g = _Graph(input_name, batch_dim)
  (out,) = _run(g, closed.jaxpr, [np.asarray(c) for c in closed.consts] + [input_name])
  g.nodes.append(onnx.helper.make_node("Identity", [g.name(out)], [output_name]))
  (in_aval,), (out_aval,) = closed.in_avals, closed.out_avals
  graph = onnx.helper.make_graph(
      g.nodes, graph_name, [_value_info(onnx, input_name, in_aval, batch_dim, batch_name)],
      [_value_info(onnx, output_name, out_aval, batch_dim, batch_name)], g.inits)
  model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                 ir_version=IR_VERSION, producer_name="regnas-jax",
                                 doc_string=doc)
  onnx.helper.set_model_props(model, dict(metadata or {}))
  onnx.checker.check_model(model, full_check=True)
  return model
