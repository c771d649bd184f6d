"""Counted costs of any JAX function, read off its traced program.

``count_macs(fn, *args)`` walks the jaxpr of ``fn(*args)`` and adds the multiply-accumulates of
every convolution and dot product: a convolution costs ``output elements x (input features per
group) x kernel taps``, a dot product ``output elements x contracted size``; everything else
(elementwise ops, reductions, BN) is free.  That is the convention of OFA's counter, so it
checks the spaces' analytic formulas against what a model actually executes.

The function is traced inside ``nn.ops.conv_form()``: every depthwise convolution of the
package's layers takes XLA's convolution form there, whatever ``depthwise_impl`` the model
runs with (the CPU default computes it as shifted multiply-adds, which this convention does
not count), so a model counts the same under every implementation.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core as jcore

from regnas_jax.nn import ops


def count_macs(fn, *args, **kwargs) -> int:
  """Multiply-accumulates of one call ``fn(*args, **kwargs)`` (shapes only, nothing runs;
  depthwise convolutions in their convolution form, module docstring)."""
  with ops.conv_form():
    closed = jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args)
  return _jaxpr_macs(closed.jaxpr)


def _sub_jaxprs(eqn):
  for v in eqn.params.values():
    vals = v if isinstance(v, (tuple, list)) else (v,)
    for x in vals:
      if isinstance(x, jcore.ClosedJaxpr):
        yield x.jaxpr
      elif isinstance(x, jcore.Jaxpr):
        yield x


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      if eqn.params.get("batch_group_count", 1) != 1:
        raise NotImplementedError("count_macs: batch_group_count > 1")
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
      taps = math.prod(rhs[d] for d in spec[2:])
      total += math.prod(eqn.outvars[0].aval.shape) * rhs[spec[1]] * taps
    elif name == "dot_general":
      (lc, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)
    elif name == "scan":
      total += eqn.params["length"] * _jaxpr_macs(eqn.params["jaxpr"].jaxpr)
    elif name == "while":
      if any(True for j in _sub_jaxprs(eqn) if _jaxpr_macs(j)):
        raise NotImplementedError("count_macs: loop with an unknown trip count contains MACs")
    elif name == "cond":
      total += max(_jaxpr_macs(b.jaxpr) for b in eqn.params["branches"])
    else:
      total += sum(_jaxpr_macs(j) for j in _sub_jaxprs(eqn))
  return total


def count_params(tree) -> int:
  """Number of scalars in a pytree of arrays (e.g. ``variables['params']``)."""
  return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))
