"""The command line on the offline default (OFA-MobileNetV3 on digits): the smoke config end to
end from a built wheel, preemption (kill -9 and SIGTERM) with resumption to the uninterrupted
result, and one-line errors on bad input.  ``test_run_search_spaces.py`` runs the other spaces'
smoke configs, ``test_cli.py`` the flags and errors that need no job.

The smoke run is shared (a module fixture): it is also the wheel check (the package built as a
wheel, installed in a fresh virtual environment, ``regnas-search`` run outside the source tree),
and its checkpoints are the uninterrupted reference of the preemption test.  Every process
shares the test run's persistent XLA compilation cache (``conftest.py``), so the training step
compiles once in this file.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile

import jax
import numpy as np
import pytest
import tbevents

from regnas_jax.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "digits_mbv3.py:smoke")
TOTAL = 12  # steps of the smoke config; it checkpoints every 4 and logs every 2


def run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def ok(*cmd, cwd=None):
  """The stdout of a command that must succeed (its stderr in the failure message)."""
  out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, f"{cmd}: {out.stderr}"
  return out.stdout


# What a wheel is built from: the packaging files and the two package folders.
PACKAGING = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE", "regnas_jax",
             "configs")


def wheel_venv(tmp):
  """A fresh virtual environment in ``tmp/venv`` holding the wheel built from this source tree.

  The wheel is built from a copy of the packaging inputs (no stale ``build/``) and installed
  without dependencies; the dependencies are then made importable from this test run's
  environment by a ``.pth`` line (it adds that site-packages folder to ``sys.path`` without
  running its ``.pth`` files, so the editable install of the source tree stays out).
  """
  src = tmp / "src"
  src.mkdir()
  for name in PACKAGING:
    if os.path.isdir(os.path.join(ROOT, name)):
      shutil.copytree(os.path.join(ROOT, name), src / name,
                      ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(os.path.join(ROOT, name), src / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
  ok(*pip, "wheel", "-q", "--no-deps", "-w", tmp / "dist", src)
  (wheel,) = (tmp / "dist").glob("regnas_jax-*.whl")
  ok(sys.executable, "-m", "venv", "--without-pip", tmp / "venv")
  python = tmp / "venv" / "bin" / "python"
  ok(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
  site = ok(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip()
  deps = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
  with open(os.path.join(site, "_test_deps.pth"), "w") as f:
    f.write("".join(d + "\n" for d in deps))
  return tmp / "venv", wheel


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """``(workdir, CompletedProcess)`` of one uninterrupted smoke run with the comparison variants,
  TensorBoard events and the members exported as ONNX and StableHLO: ``regnas-search --config
  digits_mbv3:smoke`` of the installed wheel, run in an empty folder (default work dir
  ``runs/digits_mbv3_smoke`` there)."""
  venv, wheel = wheel_venv(tmp_path_factory.mktemp("wheel"))
  cwd = tmp_path_factory.mktemp("elsewhere")
  out = subprocess.run([venv / "bin" / "regnas-search", "--config", "digits_mbv3:smoke",
                        "--config.search.compare=True", "--config.runtime.tensorboard=True",
                        "--config.search.export_formats=onnx,stablehlo"],
                       cwd=cwd, capture_output=True, text=True, timeout=600)
  out.venv, out.wheel = venv, wheel
  return cwd / "runs" / "digits_mbv3_smoke", out


def test_wheel_holds_the_package_configs_and_command(smoke_run):
  """The wheel ships the configs, py.typed, the license and the command, and the smoke run used
  the installed package, not this source tree."""
  work, out = smoke_run
  names = set(zipfile.ZipFile(out.wheel).namelist())
  configs = {f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")}
  assert {f"regnas_jax/configs/{f}" for f in configs} | {"regnas_jax/py.typed"} <= names
  assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
  ep = [n for n in names if n.endswith("entry_points.txt")]
  assert "regnas-search = regnas_jax.cli:main" in zipfile.ZipFile(out.wheel).read(ep[0]).decode()
  where = ok(out.venv / "bin" / "python", "-c", "import regnas_jax, regnas_jax.cli as c; "
             "print(regnas_jax.__file__); print(c.resolve_config(c.DEFAULT_CONFIG))",
             cwd=work.parent).split()
  assert all(p.startswith(str(out.venv)) for p in where), where
  assert "--stop_after" in ok(out.venv / "bin" / "regnas-search", "--help", cwd=work.parent)
  assert out.returncode == 0, out.stderr
  assert (work / "results.json").is_file() and sorted(os.listdir(work.parent.parent)) == ["runs"]


def test_smoke_config_searches_a_family_and_compares(smoke_run):
  """Train, search the family (and the comparison variants), write every output."""
  work, out = smoke_run
  assert out.returncode == 0, out.stderr
  res = json.loads((work / "results.json").read_text())
  assert res["training"]["steps"] == TOTAL and res["training"]["resumed_from"] is None
  assert set(res["test_top1"]) == {"max", "min"} and "test top-1: largest subnet" in out.stdout
  fam = res["family"]["members"]
  assert [m["name"] for m in fam] == ["A1", "A2", "A3"] and res["family_label"] == "R2+inclusion"
  from regnas_jax import export, spaces

  sp = spaces.get_space("ofa_mbv3", **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in res["space"].items() if k != "space"})
  archs = [sp.arch_from_dict(m["arch"]) for m in fam]
  mx = sp.macs(sp.max_arch())
  for m, a, b in zip(fam, archs, (0.35, 0.6, 0.9)):
    assert 0.9 * b * mx <= m["macs"] == sp.macs(a) <= b * mx
    assert 0 <= m["test_top1"] <= 1 and 0 <= m["val_top1"] <= 1
  assert sp.contains(archs[1], archs[0]) and sp.contains(archs[2], archs[1])
  mat = np.asarray(res["family"]["nfr_matrix_test"])
  assert mat.shape == (3, 3) and np.all(np.diag(mat) == 0) and np.all(mat >= 0)
  assert set(res["compare"]) == {"R2+inclusion", "R2", "R0", "random R2+inclusion"}
  for label, f in res["compare"].items():     # every variant shares the searched reference A1
    assert f["members"][0]["arch"] == fam[0]["arch"]
  assert len(res["compare_table"]) == 8 and "| A3 | R0 |" in out.stdout
  assert res["search"]["subnets_scored"] == len(res["evaluated"]) > 3
  for name in ("results.md", "top1_vs_macs.png", "nfr_matrix.png", "search/reference.json",
               "search/R0.json"):
    assert (work / name).is_file(), name
  module, variables, arch, info = export.load_subnet(str(work / "subnets" / "A2"))
  assert info["arch"] == fam[1]["arch"] and info["metrics"]["test_top1"] == fam[1]["test_top1"]
  assert module.apply(variables, np.zeros((2, 8, 8, 3), np.float32)).shape == (2, 10)
  metrics = [json.loads(ln) for ln in (work / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == list(range(2, TOTAL + 1, 2))

  # Same work dir, other space: refused with one line; the checkpoints stay as they were.
  before = sorted(os.listdir(work / "checkpoints"))
  out = run("--config", SMOKE, "--workdir", str(work), "--config.space.width_mult=0.5")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "belongs to another run (space.width_mult: saved 0.25, now 0.5)" \
      in lines[0], out.stderr
  assert sorted(os.listdir(work / "checkpoints")) == before


def test_the_run_reads_well_named_scalars_progress_plots_and_scored_archs(smoke_run):
  """TensorBoard: training metrics named per subnet role (no index tags, no compile seconds or
  resolution), the search's progress per member and generation (the comparison variants under
  their names); training.png and search.png; every scored subnet with its architecture."""
  work, out = smoke_run
  assert out.returncode == 0, out.stderr
  res = json.loads((work / "results.json").read_text())
  tags = tbevents.scalars(str(work / "tensorboard"))
  train = {t for t in tags if not t.startswith("search/")}
  roles = {f"{m}/{r}" for m in ("acc", "loss") for r in ("largest", "smallest", "random")}
  assert train == {"loss", "grad_norm", "lr", "images_per_s"} | roles
  assert [s for s, _ in tags["acc/largest"]] == list(range(2, TOTAL + 1, 2))
  for label, fam in res["compare"].items():
    prefix = "search/" + label.replace(" ", "_").replace("+", "_")
    for m in fam["members"][1:]:         # A1 is the reference searched once, below
      prog = m["search"]["progress"]
      got = tags[f"{prefix}/{m['name']}/best_reward"]
      assert [s for s, _ in got] == [g["generation"] for g in prog]
      assert [v for _, v in got] == pytest.approx([g["best_reward"] for g in prog], abs=1e-6)
      assert {f"{prefix}/{m['name']}/{k}" for k in ("best_top1", "best_nfr", "mean_reward",
                                                     "scored")} <= set(tags)
  assert "search/reference/A1/best_top1" in tags
  for name in ("training.png", "search.png"):
    assert (work / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  from regnas_jax import spaces

  sp = spaces.get_space("ofa_mbv3", **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in res["space"].items() if k != "space"})
  for e in res["evaluated"]:
    a = sp.arch_from_dict(e["arch"])
    assert sp.arch_to_dict(a) == e["arch"] and sp.macs(a) == e["macs"]


def test_every_member_ships_as_onnx_and_stablehlo(smoke_run):
  """``config.search.export_formats``: every member's files carry the dataset's normalisation and
  class names, and one member (A2) agrees with its saved subnet in JAX under onnxruntime and
  under ``jax.export`` (relative error below 1e-4)."""
  ort = pytest.importorskip("onnxruntime")
  from regnas_jax import data, export

  work, out = smoke_run
  assert out.returncode == 0, out.stderr
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
  for got in (sess.run(None, {"images": images})[0], exp.call(images)):
    assert np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max() < 1e-4


# -- preemption: kill -9 at a random step or SIGTERM, restart, end with the same parameters ------
def start(workdir):
  """A ``run_search.py --stop_after=train`` process; its stdout and stderr go to files next to
  the work dir (``proc.out``, ``proc.err``), polled while it runs."""
  logs = os.path.dirname(workdir)
  n = len([f for f in os.listdir(logs) if f.startswith("stdout")])
  out = open(os.path.join(logs, f"stdout{n}.txt"), "w")
  err = open(os.path.join(logs, f"stderr{n}.txt"), "w")
  p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_search.py"), "--config", SMOKE,
                        "--workdir", str(workdir), "--stop_after=train"], stdout=out, stderr=err,
                       text=True)
  p.out, p.err = out.name, err.name
  out.close()
  err.close()
  return p


def read(path):
  with open(path) as f:
    return f.read()


def logged_steps(workdir, since=None):
  """Steps in the run's metrics.jsonl (only those of lines written after ``since``, a time)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  for ln in open(path):
    try:
      rec = json.loads(ln)
      if since is None or rec["time"] > since:
        out.append(rec["step"])
    except (json.JSONDecodeError, KeyError):
      pass
  return out


def wait_for(proc, done, timeout=400):
  t = time.time()
  while not done():
    assert proc.poll() is None, read(proc.err)
    assert time.time() - t < timeout, "training made no progress"
    time.sleep(0.05)


def final_arrays(workdir):
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), {})
  try:
    return ck.latest_step(), ck.restore_arrays()
  finally:
    ck.close()


def test_kill9_and_sigterm_resume_to_the_uninterrupted_result(smoke_run, tmp_path):
  ref, out = smoke_run   # the uninterrupted run: same config, seed and steps
  assert out.returncode == 0, out.stderr

  # kill -9 at a random logged step after the first checkpoint (saved every 4 steps, before the
  # metrics of later steps are written).
  work = tmp_path / "run"
  kill_at = 6   # after the checkpoint of step 4 (or 8): leaves steps to interrupt below
  p = start(work)
  wait_for(p, lambda: max(logged_steps(work), default=0) >= kill_at)
  p.send_signal(signal.SIGKILL)
  p.wait()
  ck_step, _ = final_arrays(work)
  assert ck_step is not None and ck_step < TOTAL
  assert max(logged_steps(work)) > ck_step   # stale lines: dropped when the next run resumes

  # SIGTERM once the resumed run has done steps it has not saved: the current step finishes, a
  # checkpoint is saved off the 4-step schedule, exit status 143.  (A SIGTERM before any such
  # step -- e.g. during the first compile -- ends the run at once: tests/test_faults.py.)
  # (The killed run's stale lines also have steps > ck_step until the resumed run drops them:
  # wait for a line written by this run.)
  t_resume = time.time()
  p = start(work)
  wait_for(p, lambda: max(logged_steps(work, since=t_resume), default=0) > ck_step)
  p.send_signal(signal.SIGTERM)
  p.wait(timeout=300)
  stdout, stderr = read(p.out), read(p.err)
  assert p.returncode == 143, stderr
  assert "stopped by SIGTERM after step" in stderr
  resumed_line = [ln for ln in stdout.splitlines() if "resumed from" in ln]
  assert resumed_line and f"step {ck_step}/{TOTAL}" in resumed_line[0], stdout
  term_step, _ = final_arrays(work)
  assert ck_step < term_step < TOTAL

  p = start(work)
  p.wait(timeout=600)
  assert p.returncode == 0, read(p.err)
  assert f"step {term_step}/{TOTAL}" in read(p.out)
  steps = logged_steps(work)
  assert steps == sorted(set(steps)) and steps[-1] == TOTAL

  s_ref, a_ref = final_arrays(ref)
  s_run, a_run = final_arrays(work)
  assert s_ref == s_run == TOTAL
  leaves_ref = jax.tree_util.tree_leaves_with_path(a_ref)
  leaves_run = jax.tree.leaves(a_run)
  assert len(leaves_ref) == len(leaves_run) > 50
  for (path, x), y in zip(leaves_ref, leaves_run):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("args, message", [
    (["--config.nope=1"], "--config.nope: no such config key"),
    (["--config.space.stem=cifar"], "config.space: stem: 'cifar' is not one of"),
    (["--config.train.method=shrink"], "config.train.method: 'shrink' is not one of"),
    (["--config.data.name=mnist"], "config.data.name: 'mnist' is not one of"),
    (["--config", "configs/cifar10_mbv3.py"],
     "config.data.path: give the cifar10 archive as distributed"),
    (["--config", "configs/cifar10_mbv3.py", "--config.data.path=/nonexistent.npz"],
     "config.data.path: no such file or folder: /nonexistent.npz"),
    (["--config.train.batch_size=5000"], "train.batch_size: 5000 exceeds the 1168"),
    (["--config", "configs/missing.py"], "no such file, nor a config shipped with regnas-jax"),
    (["--config", "configs/digits_mbv3.py:huge"], "unknown variant 'huge'"),
    (["--config.search.population_size=x"], "invalid literal for int()"),
    (["--config.search.reward=R7"], "config.search.reward: reward 'R7': use one of R0, R1, R2"),
    (["--config.search.budgets=(0.9,0.5)"], "config.search.budgets: need positive budgets in "
                                            "ascending order"),
    (["--config.search.budget_unit=mmacs"], "A1's window [0.315, 0.350] MMACs misses the space's range"),
    (["--config.search.reference=/nonexistent.json"],
     "config.search.reference: /nonexistent.json: cannot read"),
    (["--config.search.parent_ratio=0.01"], "config.search.parent_ratio: 0.01 x population 10"),
    (["--config", "configs/digits_resnet50.py", "--config.train.method=progressive"],
     "progressive shrinking needs a 'kernel' field in space ofa_resnet50"),
    (["--config", "configs/digits_scarlet.py", "--config.search.objectives=('top1','latency')"],
     "config.search.objectives: 'latency' is not one of"),
    (["--config", "configs/digits_scarlet.py", "--config.search.objectives=('top1','nfr')"],
     "config.search.reference: the 'nfr' objective needs a reference"),
    (["--config", "configs/digits_scarlet.py", "--config.search.p_re=0.9"],
     "config.search.p_rm + p_re + p_pr: must sum to 1"),
    (["--config", "configs/digits_scarlet.py:s3"], "unknown variant 's3'"),
    (["--config.search.export_formats=onnx,tflite"],
     "config.search.export_formats: 'tflite' is not one of ('onnx', 'stablehlo')"),
])
def test_bad_input_one_error_line_and_nothing_written(tmp_path, args, message):
  work = tmp_path / "work"
  out = run(*args, "--workdir", str(work))
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
  assert not work.exists()
