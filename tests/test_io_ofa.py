"""OFA's supernets imported: our supernets compute OFA's function on OFA's weights.

The fixtures (tests/fixtures/make_ofa_fixtures.py) were written by OFA's own PyTorch code:
small OFAMobileNetV3 / OFAResNets supernets with random weights, random kernel-transform
matrices and BN statistics, their eval-mode logits for the max, the min and 10 subnets drawn by
OFA's ``sample_active_subnet`` (the supernet after ``set_active_subnet`` and the static network
of ``get_active_subnet``), one ``get_active_subnet`` state dict, and the key/shape lists of OFA's
released full-size supernets.  Nothing here needs torch.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax import convert, export, spaces
from regnas_jax import nn as nets
from regnas_jax.errors import DataError, InvalidArchError
from regnas_jax.io import ofa

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
CASES = ("ofa_mbv3_tiny", "ofa_resnet50_tiny")
TOL = 1e-4  # max |ours - OFA| / max |OFA| per subnet, float32
# Each exact-shape subnet is its own program (about a second of tracing and compiling each):
# by default the extracted check runs the max, the min and 4 random subnets (the masked check
# runs all 12 in one program, and masked == extracted is tested on many more archs in
# tests/test_nn_*.py); REGNAS_OFA_ALL_EXTRACTED=1 runs all 12.
N_EXTRACTED = 12 if os.environ.get("REGNAS_OFA_ALL_EXTRACTED") else 6
# Inference programs on tiny inputs: XLA's optimisation passes cost more than they save.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_fast(fn, *args):
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST)


class Case:
  """One fixture: OFA's settings, archs and logits, our space, supernet and its variables."""

  def __init__(self, name):
    self.name = name
    self.pth = os.path.join(FIX, name + ".pth")
    with open(os.path.join(FIX, name + ".json")) as f:
      self.meta = json.load(f)
    with np.load(os.path.join(FIX, name + ".npz")) as z:
      self.z = {k: z[k] for k in z.files}
    cfg = dict(self.meta["space"])
    self.space = spaces.get_space(cfg.pop("name"), **{k: tuple(v) if isinstance(v, list) else v
                                                      for k, v in cfg.items()})
    self.net = nets.build_supernet(self.space)
    self.variables = ofa.load_supernet_variables(self.pth, self.net)
    self.archs = [ofa.from_ofa_arch(self.space, a) for a in self.meta["archs"]]

  def ref_state(self):
    return {k[len("subnet/"):]: v for k, v in self.z.items() if k.startswith("subnet/")}


@functools.lru_cache(maxsize=None)
def get_case(name) -> Case:
  return Case(name)


@pytest.fixture(params=CASES)
def case(request):
  return get_case(request.param)


def rel_err(ours, theirs) -> np.ndarray:
  """Per subnet: max |ours - theirs| / max |theirs|."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  return np.abs(ours - theirs).max((-2, -1)) / np.abs(theirs).max((-2, -1))


def test_fixture_covers_max_min_and_ten_random(case):
  sp, a = case.space, case.archs
  same = lambda x, y: all(np.array_equal(u, v) for u, v in zip(x, y))
  assert same(a[0], sp.max_arch()) and same(a[1], sp.min_arch())
  random = {json.dumps(x) for x in case.meta["archs"][2:]}
  assert len(random) >= 10
  # OFA's own subnets and its static extraction agree (the fixture is self-consistent).
  assert rel_err(case.z["subnet_logits"], case.z["supernet_logits"]).max() < 1e-5


def test_masked_supernet_logits_equal_ofa(case):
  x, v = case.z["images"], case.variables
  apply = compile_fast(lambda a, v, x: case.net.apply(v, x, a), case.archs[0], v, x)
  logits = np.stack([apply(a, v, x) for a in case.archs])   # one program, every subnet
  err = rel_err(logits, case.z["supernet_logits"])
  print(f"{case.name} masked: max rel err {err.max():.2e}")
  assert err.max() <= TOL, err


def test_extracted_subnet_logits_equal_ofa(case):
  extracted = [case.net.extract(case.variables, a) for a in case.archs[:N_EXTRACTED]]
  modules = [m for m, _ in extracted]

  def all_logits(vs, x):  # one program for the exact-shape subnets
    return jnp.stack([m.apply(v, x) for m, v in zip(modules, vs)])

  vs = [v for _, v in extracted]
  logits = compile_fast(all_logits, vs, case.z["images"])(vs, case.z["images"])
  err = rel_err(logits, case.z["subnet_logits"][:N_EXTRACTED])
  print(f"{case.name} extracted: max rel err {err.max():.2e}")
  assert err.max() <= TOL, err


def test_export_is_ofa_s_get_active_subnet_state_dict(case):
  i = case.meta["subnet_state_arch"]
  ours = ofa.export_subnet(case.net, case.variables, case.archs[i])
  ref = case.ref_state()
  counters = [k for k in ours if k.endswith("num_batches_tracked")]
  assert counters and all(ours[k].dtype == np.int64 for k in counters)
  assert [k for k in ours if k not in counters] == list(ref)   # same keys, same order
  for k, v in ref.items():
    np.testing.assert_allclose(ours[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
  # ... and back: OFA's state dict imported as the exact subnet's variables.
  module, imported = ofa.import_subnet(case.net, case.archs[i], ref)
  _, extracted = case.net.extract(case.variables, case.archs[i])
  assert module == case.net.exact_module(case.archs[i])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               imported, extracted)
  _, again = ofa.import_subnet(case.net, case.archs[i], ours)
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, extracted))


def test_arch_round_trip_both_ways(case):
  sp = case.space
  rng = np.random.default_rng(3)
  for _ in range(50):
    a = sp.arch_type(**{f.name: rng.integers(0, f.size, f.shape).astype(np.int32)
                        for f in sp.fields()})
    back = ofa.from_ofa_arch(sp, ofa.to_ofa_arch(sp, a))
    jax.tree.map(np.testing.assert_array_equal, back, a)
  for obj in case.meta["archs"]:  # drawn by OFA's sample_active_subnet
    back = ofa.to_ofa_arch(sp, ofa.from_ofa_arch(sp, obj))
    assert back.pop("r") == [max(sp.resolutions)]
    assert back == obj


def test_arch_errors_name_the_entry():
  sp = spaces.OFAMobileNetV3Space()
  good = {"ks": 7, "e": 6, "d": [4, 4, 4, 4, 4]}
  a = ofa.from_ofa_arch(sp, dict(good, r=[160]))        # scalars stand for every block
  assert sp.resolutions[int(a.resolution)] == 160 and (np.asarray(a.kernel) == 2).all()
  for bad, msg in (({"e": [6] * 19 + [5]}, r"e\[19\]: 5 is not one of \(3, 4, 6\)"),
                   ({"d": [4, 4]}, "d has 2 values, expected 5"),
                   ({"w": 1}, "unknown key 'w'"), ({"r": 100}, r"r: 100 is not one of")):
    with pytest.raises(InvalidArchError, match=msg):
      ofa.from_ofa_arch(sp, dict(good, **bad))
  rs = spaces.OFAResNet50Space()
  with pytest.raises(InvalidArchError, match=r"w\[5\]: 3 is not one of \(0, 1, 2\)"):
    ofa.from_ofa_arch(rs, {"d": 0, "e": 0.25, "w": [0, 0, 0, 0, 0, 3]})
  stem = lambda d0: int(ofa.from_ofa_arch(rs, {"d": [d0, 0, 0, 0, 0], "e": 0.2, "w": 0}).stem_depth)
  assert (stem(0), stem(1), stem(2)) == (0, 0, 1)    # OFA runs the stem layer iff d[0] == max


def test_other_space_checkpoint_refused_in_one_line():
  mb = nets.build_supernet(spaces.OFAMobileNetV3Space(width_mult=0.35, num_classes=10))
  rn = nets.build_supernet(spaces.OFAResNet50Space(width_mult=0.125, num_classes=10))
  for net, other, msg in (
      (mb, "ofa_resnet50_tiny.pth", "holds an OFA-ResNet50 (OFAResNets) checkpoint, not "
       "OFA-MobileNetV3 (OFAMobileNetV3); convert it as ofa_resnet50"),
      (rn, "ofa_mbv3_tiny.pth", "holds an OFA-MobileNetV3 (OFAMobileNetV3) checkpoint, not "
       "OFA-ResNet50 (OFAResNets); convert it as ofa_mbv3")):
    with pytest.raises(DataError) as e:
      ofa.load_supernet_variables(os.path.join(FIX, other), net)
    assert msg in str(e.value) and "\n" not in str(e.value)
  with pytest.raises(DataError, match="not a checkpoint of an OFA supernet"):
    ofa.load_supernet_variables(os.path.join(FIX, "torch_tensors.pth"), mb)


def test_every_tensor_used_and_every_variable_filled(case):
  state = ofa.read_state_dict(case.pth)
  where = "ckpt"
  gone = dict(state)
  key = next(k for k in gone if "running_var" in k and "blocks.5" in k)
  del gone[key]
  with pytest.raises(DataError, match=f"no tensor {key} for batch_stats/.* \\(1 missing\\)"):
    ofa.convert_state_dict(gone, case.net, where)
  with pytest.raises(DataError, match=r"tensor extra.weight \(3,\) has no place in the supernet"):
    ofa.convert_state_dict(dict(state, **{"extra.weight": np.zeros(3, np.float32)}), case.net,
                           where)
  # Older checkpoints' names (OFA's load_state_dict renames them) convert to the same variables.
  old = {k.replace("blocks.1.conv.", "blocks.1.mobile_inverted_conv.").replace(".bn.bn.", ".bn."):
         v for k, v in state.items()}
  jax.tree.map(np.testing.assert_array_equal, ofa.convert_state_dict(old, case.net, where),
               case.variables)


def test_shape_mismatch_names_the_key_and_both_shapes():
  c = get_case("ofa_mbv3_tiny")
  state = ofa.read_state_dict(c.pth)
  state["classifier.linear.weight"] = np.zeros((7, 448), np.float32)
  with pytest.raises(DataError) as e:
    ofa.convert_state_dict(state, c.net, "ckpt")
  assert ("ckpt: classifier.linear.weight has shape (7, 448), the supernet needs (10, 448) for "
          "params/classifier/kernel (shapes in OFA's layout)") == str(e.value)
  flat = c.net.clone(kernel_transform=False)
  with pytest.raises(DataError, match=r"5to3_matrix \(9, 9\) has no place in the supernet \(40 "):
    ofa.load_supernet_variables(os.path.join(FIX, "ofa_mbv3_tiny.pth"), flat)


with open(os.path.join(FIX, "ofa_shapes.json")) as _f:
  RELEASED_SHAPES = json.load(_f)


@pytest.mark.parametrize("net_id", sorted(RELEASED_SHAPES))
def test_released_supernets_keys_and_shapes(net_id):
  """Our plan for OFA's released full-size supernets is exactly their state dict."""
  family, settings = ofa.RELEASED["ofa_supernet_resnet50" if net_id == "ofa_resnet50" else net_id]
  shapes = RELEASED_SHAPES[net_id]
  state = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  space = ofa.space_for_state_dict(family, state, net_id)
  assert space.width_mult == settings["width_mult"] and space.num_classes == 1000
  net = nets.build_supernet(space)
  target = ofa.abstract_variables(net)
  flat = ofa._flatten(target)
  ours = {e.key: list(ofa._ofa_shape(e, flat[(e.collection,) + e.path].shape))
          for e in ofa.supernet_plan(net)}
  assert ours == shapes
  if net_id.endswith("w1.2"):  # a w1.2 checkpoint given to a w1.0 supernet
    w10 = nets.build_supernet(spaces.OFAMobileNetV3Space(width_mult=1.0))
    with pytest.raises(DataError, match=r"first_conv.conv.weight has shape \(24, 3, 3, 3\), "
                                        r"the supernet needs \(16, 3, 3, 3\)"):
      ofa.convert_state_dict(state, w10, net_id)


def test_converted_directory_and_cli(tmp_path, capsys):
  c = get_case("ofa_resnet50_tiny")
  out = str(tmp_path / "converted")
  assert convert.main(["ofa_resnet50", c.pth, out, "--width_mult=0.125"]) == 0
  assert "converted" in capsys.readouterr().out
  v = ofa.load_supernet_variables(out, c.net)
  jax.tree.map(np.testing.assert_array_equal, v, c.variables)
  meta = ofa.read_converted_meta(out)
  assert meta["space"]["width_mult"] == 0.125 and len(meta["source"]["sha256"]) == 64
  # The same weights by either path have the same identity (for a job's checkpoint record).
  ident = {k: v for k, v in ofa.source_identity(out).items() if k != "kind"}
  assert ident == {k: v for k, v in ofa.source_identity(c.pth).items() if k != "kind"}
  # Refusals: an existing directory, the other space, a supernet of another configuration.
  assert convert.main(["ofa_resnet50", c.pth, out, "--width_mult=0.125"]) == 2
  assert "exists; choose another directory or pass --overwrite" in capsys.readouterr().err
  assert convert.main(["ofa_mbv3", c.pth, str(tmp_path / "x")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1 and "convert it as ofa_resnet50" in err
  assert not os.path.exists(tmp_path / "x")
  other = nets.build_supernet(spaces.OFAResNet50Space(width_mult=0.125, num_classes=5))
  with pytest.raises(DataError, match=r"converted for another supernet \(num_classes: saved 10, "
                                      r"now 5\)"):
    ofa.load_supernet_variables(out, other)
  # Export: a subnet saved by a job, as OFA's state dict plus its OFA arch.
  arch = c.archs[c.meta["subnet_state_arch"]]
  module, v_sub = c.net.extract(c.variables, arch)
  export.save_subnet(str(tmp_path / "A1"), c.space, arch, {"dtype": "float32"}, v_sub)
  assert convert.main(["export", str(tmp_path / "A1"), str(tmp_path / "A1.npz")]) == 0
  with np.load(tmp_path / "A1.npz") as z:
    ref = c.ref_state()
    assert set(ref) <= set(z.files)
    for k, r in ref.items():
      np.testing.assert_allclose(z[k], r, rtol=1e-5, atol=1e-6, err_msg=k)
  with open(tmp_path / "A1.arch.json") as f:
    assert json.load(f)["ofa_arch"] == ofa.to_ofa_arch(c.space, c.space.canonicalize(arch))
