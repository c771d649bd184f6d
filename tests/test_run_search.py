"""The command line: the smoke config end to end, and one-line errors on bad input."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=600)


def test_smoke_config_writes_results(tmp_path):
  out = run("--config", os.path.join(ROOT, "configs/digits_mbv3.py:smoke"), "--workdir", str(tmp_path),
            "--config.score.population=3")
  assert out.returncode == 0, out.stderr
  res = json.loads((tmp_path / "results.json").read_text())
  assert len(res["subnets"]) == 5                       # max, min and 3 random
  assert res["config"]["score"]["population"] == 3
  macs = [s["macs"] for s in res["subnets"]]
  assert macs[0] == max(macs) and macs[1] == min(macs)
  assert all(0.0 <= s["val_top1"] <= 1.0 for s in res["subnets"])
  assert res["subnets"][0]["arch"]["stages"][0]["kernel"] == [7, 7, 7, 7]
  assert "| MMACs |" in out.stdout
  assert res["training"]["steps"] == 12 and res["training"]["resumed_from"] is None
  assert set(res["test_top1"]) == {"max", "min"}
  assert "test top-1: max subnet" in out.stdout
  metrics = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == list(range(2, 13, 2))
  assert all(len(m["acc"]) == 3 and m["lr"] >= 0 for m in metrics)

  # Same work dir, other space: refused with one line; the checkpoints stay as they were.
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  out = run("--config", os.path.join(ROOT, "configs/digits_mbv3.py:smoke"), "--workdir",
            str(tmp_path), "--config.space.width_mult=0.5")
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "belongs to another run (space.width_mult: saved 0.25, now 0.5)" \
      in lines[0], out.stderr
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


@pytest.mark.parametrize("args, message", [
    (["--config.nope=1"], "unknown config key 'nope'"),
    (["--config.space.stem=cifar"], "config.space: stem: 'cifar' is not one of"),
    (["--config.train.method=shrink"], "config.train.method: 'shrink' is not one of"),
    (["--config.data.name=mnist"], "config.data.name: 'mnist' is not one of"),
    (["--config", "configs/cifar10_mbv3.py"], "config.data.path: give the packed CIFAR-10 file"),
    (["--config", "configs/cifar10_mbv3.py", "--config.data.path=/nonexistent.npz"],
     "data.path: no such file: /nonexistent.npz"),
    (["--config.train.batch_size=5000"], "train.batch_size: 5000 exceeds the 1168"),
    (["--config", "configs/missing.py"], "No such file or directory"),
    (["--config", "configs/digits_mbv3.py:huge"], "unknown variant 'huge'"),
    (["--config.score.population=x"], "invalid literal for int()"),
])
def test_bad_input_one_error_line_and_nothing_written(tmp_path, args, message):
  work = tmp_path / "work"
  out = run(*args, "--workdir", str(work))
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
  assert not work.exists()
