"""TuNAS specifics: op warmup (averaged op choices) in the supernet.

The supernet contract (masked == extracted, zero layers keep their statistics, vmap, costs ==
counted, literal inclusion) is tested for every space in ``test_contract_*.py``; the test below
uses its configuration and variables (``contract.env``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import contract
from contract import assert_close
from regnas_jax.nn.tunas import OP_DECISIONS
from regnas_jax.spaces import member


@functools.lru_cache(maxsize=None)
def intermediates_fn(net):
  """Intermediate outputs of every layer for (variables, images, arch, average flags): one
  compile (the flags are data; all False is no averaging)."""
  def run(v, x, a, average):
    return net.apply(v, x, a, average=average, capture_intermediates=True,
                     mutable=["intermediates"])[1]["intermediates"]
  return jax.jit(run)


def test_op_averaging_is_the_mean_of_the_choices():
  """Op warmup: averaging {zero, IBN} of an optional layer gives the mean of the layer's output
  with the layer off and on; averaging its kernel choices gives the mean of the depthwise
  conv's outputs with each kernel size (same input: the layers before are unchanged)."""
  e = contract.env("mobilenet_v3_like")
  sp, net = e.sp, e.net
  v, x, a = {"params": e.params, "batch_stats": e.stats_of(1)}, e.images, member(e.pop, 1)
  run = lambda a, avg: intermediates_fn(net)(v, x, a, avg)
  flags = {n: np.zeros(sp.field(n).shape, bool) for n in OP_DECISIONS}
  j = sp.optional_layers[0]
  opt, name = sp.layers[j].optional, sp.layers[j].name
  # Gate of an optional layer: averaging {zero, IBN} halves the branch.
  on_avg = dict(flags, on=flags["on"].copy())
  on_avg["on"][opt] = True
  out = lambda t: np.asarray(t[name]["__call__"][0])
  got = out(run(a, on_avg))
  y_on = out(run(a, flags))
  y_off = out(run(a._replace(on=np.where(np.arange(len(a.on)) == opt, 0, a.on)), flags))
  assert not np.allclose(y_on, y_off)
  assert_close(got, 0.5 * (y_on + y_off))
  # Kernel choices: averaging the kernel of the layer = mean of its per-kernel outputs.
  k_avg = dict(flags, kernel=flags["kernel"].copy())
  k_avg["kernel"][j] = True
  dw = lambda t: np.asarray(t[name]["dw"]["__call__"][0])
  mixed = dw(run(a, k_avg))
  singles = [dw(run(a._replace(kernel=np.where(np.arange(len(a.kernel)) == j, k, a.kernel)),
                    flags)) for k in range(3)]
  assert_close(mixed, np.mean(singles, 0))
  # SE: averaging {off, on} of a layer with SE gives the mean of its outputs without and with
  se_avg = dict(flags, se=flags["se"].copy())
  se_avg["se"][j] = True
  y_se = [out(run(a._replace(se=np.where(np.arange(len(a.se)) == j, s, a.se)), flags))
          for s in range(2)]
  assert not np.allclose(*y_se)
  assert_close(out(run(a, se_avg)), 0.5 * (y_se[0] + y_se[1]))


def test_no_averaging_flags_equal_no_average_argument():
  e = contract.env("mobilenet_v3_like")
  flags = {n: jnp.zeros(e.sp.field(n).shape, bool) for n in OP_DECISIONS}
  ev = contract.single_run("mobilenet_v3_like", 1)[0]
  got = intermediates_fn(e.net)({"params": e.params, "batch_stats": e.stats_of(1)}, e.images,
                                member(e.pop, 1), flags)
  assert_close(np.asarray(got["__call__"][0]), ev, rtol=1e-6)
