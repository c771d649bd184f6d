"""Deployment exports of saved subnets (``python -m regnas_jax.convert export DIR X.onnx`` /
``X.stablehlo``): each file's logits against the saved subnet's in JAX, the StableHLO file run
in a process that cannot import this library, the metadata, and one-line errors that leave
existing files alone.

The subnets are the contract tests' small configurations of each kind of exact subnet
(``tests/contract.py``) with random weights and BN statistics away from their init; the
reference is ``load_subnet``'s module as saved (on CPU its depthwise convs are shifted
multiply-adds, while the exports use XLA's grouped convolution: the check covers the switch).
The check images are a batch of 3 and of 1 (the exports' own check at writing uses 2), so the
symbolic batch is exercised too.
"""

import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import contract
from regnas_jax import convert, export

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# The exact-subnet kinds covered: OFA-MBv3 (elastic kernels, SE, h-swish), OFA-ResNet50
# (max-pool stem, ceil-mode average-pool shortcuts), SCARLET S1 (strided gather in a zero-pad
# skip) and S2 (ELS folded, SE), TuNAS ProxylessNAS (ImageNet stem) and MobileNetV3-Like
# (sigmoid SE).  ProxylessNAS-Enlarged uses ProxylessNAS's layers.
KINDS = ("ofa_mbv3", "ofa_resnet50", "scarlet_s1", "scarlet_s2", "proxylessnas",
         "mobilenet_v3_like")
TOL = 1e-4
DATA = {"dataset": "test", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3],
        "class_names": [f"c{i}" for i in range(10)]}


def rel_err(out, ref) -> float:
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  assert out.shape == ref.shape
  return float(np.abs(out - ref).max() / np.abs(ref).max())


@functools.lru_cache(maxsize=None)
def saved(kind: str, root: str):
  """``(subnet_dir, images (3, r, r, 3), reference logits)`` of one subnet of ``kind`` (the
  first of a seeded sample), saved with :func:`export.save_subnet`."""
  sp, net = contract.build(kind)
  variables = contract.random_variables(kind, 0)
  arch = jax.tree.map(lambda a: np.asarray(a)[0], sp.sample(jax.random.key(1), 1))
  _, ev = net.extract(variables, arch)
  opts = {k: getattr(net, k) for k in ("depthwise_impl", "kernel_transform") if hasattr(net, k)}
  directory = f"{root}/{kind}"
  export.save_subnet(directory, sp, arch, {**opts, "dtype": "float32"}, ev, data=DATA)
  module, loaded, _, info = export.load_subnet(directory)
  r = info["arch"]["resolution"]
  images = np.random.default_rng(7).normal(size=(3, r, r, 3)).astype(np.float32)
  ref = jax.jit(lambda v, x: module.apply(v, x, train=False))(loaded, images)
  return directory, images, np.asarray(ref)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def written(root):
  """Every kind exported to ``<kind>.onnx`` and ``<kind>.stablehlo``: OFA-MBv3 through the
  command line (``convert.main``; the ONNX file with ``--mean`` over subnet.json's), the others
  through :func:`convert.write_deployment`."""
  directory, _, _ = saved("ofa_mbv3", root)
  assert convert.main(["export", directory, f"{root}/ofa_mbv3.onnx", "--mean=0.1,0.2,0.3"]) == 0
  assert convert.main(["export", directory, f"{root}/ofa_mbv3.stablehlo"]) == 0
  for kind in KINDS[1:]:
    directory, _, _ = saved(kind, root)
    convert.write_deployment(directory, {"onnx": f"{root}/{kind}.onnx",
                                         "stablehlo": f"{root}/{kind}.stablehlo"})
  return root


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_logits_equal_the_subnet_s(written, kind):
  _, images, ref = saved(kind, written)
  sess = ort.InferenceSession(f"{written}/{kind}.onnx", providers=["CPUExecutionProvider"])
  (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
  r = images.shape[1]
  assert (inp.name, inp.shape, inp.type) == ("images", ["batch", r, r, 3], "tensor(float)")
  assert (out.name, out.shape) == ("logits", ["batch", 10])
  assert rel_err(sess.run(None, {"images": images})[0], ref) < TOL
  assert rel_err(sess.run(None, {"images": images[1:2]})[0], ref[1:2]) < TOL


# Run with ``python -I`` and regnas_jax made unimportable: only jax and numpy are used.
STANDALONE = """
import sys
sys.modules["regnas_jax"] = None
import jax, numpy as np
root, kinds = sys.argv[1], sys.argv[2:]
out = {}
for kind in kinds:
  with open(f"{root}/{kind}.stablehlo", "rb") as f:
    exp = jax.export.deserialize(bytearray(f.read()))
  x = np.load(f"{root}/{kind}.images.npy")
  out[kind], out[kind + "_1"] = exp.call(x), exp.call(x[1:2])
  out[kind + "_avals"] = np.asarray(str(exp.in_avals[0].shape))
np.savez(f"{root}/standalone.npz", **{k: np.asarray(v) for k, v in out.items()})
"""


def test_stablehlo_runs_with_jax_alone_and_equals_the_subnet(written):
  for kind in KINDS:
    np.save(f"{written}/{kind}.images.npy", saved(kind, written)[1])
  proc = subprocess.run([sys.executable, "-I", "-c", STANDALONE, written, *KINDS],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  got = np.load(f"{written}/standalone.npz")
  for kind in KINDS:
    _, images, ref = saved(kind, written)
    r = images.shape[1]
    assert str(got[kind + "_avals"]) == f"(batch, {r}, {r}, 3)"
    assert rel_err(got[kind], ref) < TOL, kind
    assert rel_err(got[kind + "_1"], ref[1:2]) < TOL, kind


def test_metadata_in_the_onnx_model_and_the_sidecar(written):
  directory, _, _ = saved("ofa_mbv3", written)
  info = json.loads(open(f"{directory}/subnet.json").read())
  props = {p.key: p.value for p in onnx.load(f"{written}/ofa_mbv3.onnx").metadata_props}
  side = json.loads(open(f"{written}/ofa_mbv3.stablehlo.json").read())
  for meta, mean in (({k: json.loads(v) for k, v in props.items()}, [0.1, 0.2, 0.3]),
                     (side, DATA["mean"])):
    assert meta["arch"] == info["arch"] and meta["space"] == info["space"]
    assert meta["resolution"] == info["arch"]["resolution"] == 12
    assert (meta["mean"], meta["std"], meta["class_names"]) == (
        mean, DATA["std"], DATA["class_names"])
    assert meta["input"]["shape"] == ["batch", 12, 12, 3] and meta["input"]["layout"] == "NHWC"
    assert meta["regnas_jax_version"] and meta["check"]["max_relative_error"] < TOL
  assert side["artifact"] == "ofa_mbv3.stablehlo" and "cpu" in side["platforms"]


def error_of(capsys, *argv) -> str:
  """The one ``error:`` line of a failing ``convert export`` (exit status 2)."""
  assert convert.main(["export", *map(str, argv)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  return err


def test_bad_input_is_one_line_and_keeps_existing_files(root, tmp_path, capsys, monkeypatch):
  directory, _, _ = saved("ofa_mbv3", root)
  out = tmp_path / "A.onnx"
  out.write_bytes(b"earlier export")
  assert "subnet.json: cannot read" in error_of(capsys, tmp_path / "missing", out)
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "subnet.json").write_text("{not json")
  assert "not JSON" in error_of(capsys, tmp_path / "bad", out)
  assert "cannot tell the format" in error_of(capsys, directory, tmp_path / "A.tflite")
  assert "unknown format 'tflite'" in error_of(capsys, directory, out, "--format=tflite")
  assert "--mean: need three" in error_of(capsys, directory, out, "--mean=0.5,0.5")
  blocker = tmp_path / "file"
  blocker.write_text("")
  assert "cannot write" in error_of(capsys, directory, blocker / "A.stablehlo")
  monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
  assert 'pip install "regnas-jax[onnx]"' in error_of(capsys, directory, out)
  assert out.read_bytes() == b"earlier export"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["A.onnx", "bad", "file"]


# Functions using the translator's rules that the subnets above do not reach (or reach in one
# form only); weights as closed-over constants, a symbolic batch as in the exports.
W = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
RULE_CASES = {
    "einsum": lambda x: jax.numpy.einsum("bhwc,bhwd->bcd", x, x),
    "matmul_transposed": lambda x: x @ W.T[:, :4].T,
    "slice_concat": lambda x: jax.numpy.concatenate(
        [jax.lax.slice_in_dim(x, 0, 3, 2, axis=2), jax.lax.slice_in_dim(x, 1, 3, axis=1)[:, :, :2]],
        axis=1),
    "select_clamp": lambda x: jax.numpy.where(x > 0, jax.lax.clamp(-0.5, x, 0.7), x ** 3),
    "reduce_max_exp": lambda x: jax.numpy.exp(x.max(axis=(1, 2))) + jax.numpy.tanh(x).min(),
    "pad_transpose": lambda x: jax.numpy.pad(x, ((0, 0), (1, 2), (0, 1), (0, 0)),
                                             constant_values=0.5).transpose(0, 3, 1, 2),
    "broadcast_batch": lambda x: x + jax.numpy.broadcast_to(
        jax.numpy.arange(4.0), (x.shape[0], 3, 3, 4)),
    "max_pool": lambda x: jax.lax.reduce_window(x, -jax.numpy.inf, jax.lax.max, (1, 3, 3, 1),
                                                (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))),
}


@pytest.mark.parametrize("name", sorted(RULE_CASES))
def test_translator_rules_equal_jax(name):
  from regnas_jax.io import onnx as onnx_lib

  fn = RULE_CASES[name]
  spec = jax.ShapeDtypeStruct((*jax.export.symbolic_shape("batch"), 3, 3, 4), np.float32)
  model = onnx_lib.to_onnx(fn, spec)
  sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  for n in (1, 2):
    x = np.random.default_rng(n).normal(size=(n, 3, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"images": x})[0], fn(x), rtol=1e-5, atol=1e-6)


def test_untranslatable_primitive_is_named():
  from regnas_jax.io import onnx as onnx_lib

  spec = jax.ShapeDtypeStruct((2, 3), np.float32)
  with pytest.raises(onnx_lib.UnsupportedError, match="primitive 'cumsum'"):
    onnx_lib.to_onnx(lambda x: jax.numpy.cumsum(x, axis=1), spec)
