"""A saved subnet loads on its own and computes what the masked supernet computes."""

import jax
import numpy as np
import pytest

from regnas_jax import evaluate, export
from regnas_jax.checkpoint import CheckpointError


def test_saved_subnet_round_trip_equals_masked_supernet(tiny, tmp_path):
  sp, net, v, _ = tiny
  # Shapes as in test_evaluate.py (3 members, 2 calibration batches of 4, 7 images): the same
  # compiled scoring programs.  Member 0 is exported.
  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(3), 3))
  arch = jax.tree.map(lambda a: a[0], pop)
  calib = jax.random.normal(jax.random.key(4), (2, 4, 12, 12, 3))
  x = jax.random.normal(jax.random.key(5), (7, 12, 12, 3))
  stats = evaluate.recalibrate_bn(net, v, calib, pop)
  masked = evaluate.population_logits(net, {"params": v["params"], "batch_stats": stats}, x, pop,
                                      member_stats=True)[0]
  _, ev = net.extract({"params": v["params"],
                       "batch_stats": jax.tree.map(lambda s: s[0], stats)}, arch)
  path = tmp_path / "A1"
  opts = {"depthwise_impl": net.depthwise_impl, "kernel_transform": net.kernel_transform,
          "dtype": "float32", "dropout_rate": 0.0}
  export.save_subnet(str(path), sp, arch, opts, ev, metrics={"val_top1": 0.5})
  export.save_subnet(str(path), sp, arch, opts, ev, metrics={"val_top1": 0.5})  # replace in place
  module, loaded, arch2, info = export.load_subnet(str(path))
  jax.tree.map(np.testing.assert_array_equal, arch2, sp.canonicalize(sp.validate(arch)))
  assert info["metrics"] == {"val_top1": 0.5} and info["arch"] == sp.arch_to_dict(arch)
  out = jax.jit(lambda vv: module.apply(vv, x, train=False))(loaded)
  np.testing.assert_allclose(np.asarray(out), np.asarray(masked), rtol=1e-4, atol=2e-5)


def test_load_errors_are_one_clear_line(tmp_path):
  with pytest.raises(CheckpointError, match="subnet.json: cannot read"):
    export.load_subnet(str(tmp_path))
  (tmp_path / "subnet.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="not JSON"):
    export.load_subnet(str(tmp_path))
  (tmp_path / "subnet.json").write_text('{"space": {"space": "ofa_mbv3"}}')
  with pytest.raises(CheckpointError, match="not a saved subnet"):
    export.load_subnet(str(tmp_path))
