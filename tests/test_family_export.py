"""``config.search.export_formats``: the family job writes every member for deployment.

One command-line run of the digits smoke family search with ``('onnx', 'stablehlo')`` on; the
files of every member are there with the dataset's normalisation and class names, and one member
(A2) agrees with its saved subnet in JAX under onnxruntime and under ``jax.export``.  A bad
format stops the command before anything is written.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from regnas_jax import data, export

ort = pytest.importorskip("onnxruntime")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "digits_mbv3.py:smoke")


def run(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), "--config", SMOKE,
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_family_job_writes_every_member_for_deployment(tmp_path):
  work = tmp_path / "run"
  proc = run("--workdir", str(work), "--config.search.export_formats=onnx,stablehlo")
  assert proc.returncode == 0, proc.stderr[-3000:]
  names = [m["name"] for m in json.loads((work / "results.json").read_text())["family"]["members"]]
  assert names == ["A1", "A2", "A3"]
  digits = data.load_digits()
  for name in names:
    for suffix in (".onnx", ".stablehlo", ".stablehlo.json"):
      assert (work / "subnets" / f"{name}{suffix}").is_file(), f"{name}{suffix}"
    meta = json.loads((work / "subnets" / f"{name}.stablehlo.json").read_text())
    assert (meta["name"], meta["dataset"], meta["resolution"]) == (name, "digits", 8)
    np.testing.assert_allclose(meta["mean"], digits.mean)
    np.testing.assert_allclose(meta["std"], digits.std)
    assert meta["class_names"] == list(digits.class_names)
  module, variables, _, _ = export.load_subnet(str(work / "subnets" / "A2"))
  images = np.random.default_rng(3).normal(size=(5, 8, 8, 3)).astype(np.float32)
  ref = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images),
                   np.float64)
  sess = ort.InferenceSession(str(work / "subnets" / "A2.onnx"),
                              providers=["CPUExecutionProvider"])
  exp = jax.export.deserialize(bytearray((work / "subnets" / "A2.stablehlo").read_bytes()))
  for out in (sess.run(None, {"images": images})[0], exp.call(images)):
    assert np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max() < 1e-4


def test_unknown_export_format_stops_before_anything_is_written(tmp_path):
  proc = run("--workdir", str(tmp_path / "run"), "--config.search.export_formats=onnx,tflite")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: config.search.export_formats: 'tflite' is not one of ('onnx', 'stablehlo')"]
  assert not (tmp_path / "run").exists()
