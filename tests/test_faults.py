"""Faults through the command line: every one ends with one ``error:`` line and exit status 2 (143
for SIGTERM), no traceback, and no file of the work dir changed or lost.

Cases: a diverging run (non-finite loss), a search whose supernet was retrained (stale state),
SIGTERM during the first compile and during the search, a second run on a busy work dir and a
stale lock, work dirs that cannot be used, a full disk (a tiny tmpfs where the machine allows
mounting one), damaged CIFAR-10 files and decode caches, saved search states and latency
measurements with bad content, and a damaged latest checkpoint (taken aside, the run resumes
from the intact one).  The cases that need a trained supernet share one smoke run.
"""

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "digits_mbv3.py:smoke")
CIFAR = os.path.join(ROOT, "configs", "cifar10_mbv3.py:smoke")
TUNAS = os.path.join(ROOT, "configs", "digits_tunas.py:latency,smoke")


def cli(*args, cwd=ROOT, timeout=900):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


def start(*args, out_dir):
  out = open(os.path.join(out_dir, "out.txt"), "w")
  err = open(os.path.join(out_dir, "err.txt"), "w")
  p = subprocess.Popen([sys.executable, os.path.join(ROOT, "run_search.py"), *args], cwd=ROOT,
                       stdout=out, stderr=err, text=True)
  p.out, p.err = out.name, err.name
  out.close()
  err.close()
  return p


def read(path):
  with open(path) as f:
    return f.read()


def wait_for(proc, cond, timeout=600):
  t = time.time()
  while not cond():
    assert proc.poll() is None, read(proc.err)
    assert time.time() - t < timeout, "no progress"
    time.sleep(0.05)


def snapshot(d) -> dict:
  """``{relative path: sha256}`` of every file below ``d``."""
  out = {}
  for root, _, files in os.walk(d):
    for f in files:
      p = os.path.join(root, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, d)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def one_error(out, *parts, status=2):
  """The process failed with one ``error:`` line containing ``parts`` and no traceback."""
  assert out.returncode == status, (out.returncode, out.stderr[-3000:])
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  for p in parts:
    assert p in errors[0], errors[0]
  return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished smoke run (training, search, results) to copy for the cases that need one."""
  work = tmp_path_factory.mktemp("trained") / "w"
  out = cli("--config", SMOKE, "--workdir", str(work))
  assert out.returncode == 0, out.stderr[-3000:]
  return work


def copy_of(src, tmp_path):
  dst = tmp_path / "w"
  shutil.copytree(src, dst)
  return dst


# -- training ------------------------------------------------------------------------------------
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path):
  for key, value in (("lr", "nan"), ("lr", "-0.1"), ("momentum", "1.5"), ("weight_decay", "inf"),
                     ("label_smoothing", "1.0"), ("max_nonfinite_steps", "-1")):
    work = tmp_path / key
    one_error(cli("--config", SMOKE, "--workdir", str(work), f"--config.train.{key}={value}"),
              f"config.train.{key}")
    assert not work.exists()


def test_missing_weights_to_start_from_are_refused_before_anything_is_written(tmp_path):
  """``config.supernet.init_from`` naming nothing: one error naming the path, no work dir."""
  from regnas_jax import jobs
  from regnas_jax.configs import digits_mbv3
  from regnas_jax.errors import ConfigError

  cfg = digits_mbv3.get_config("smoke")
  cfg.supernet.init_from = str(tmp_path / "no_such_ofa.pth")
  work = tmp_path / "w"
  with pytest.raises(ConfigError, match=r"^config.supernet.init_from: .*no_such_ofa.pth: no such "
                                        r"file or directory"):
    jobs.run(cfg, str(work))
  assert not work.exists()


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_step_and_saves_nothing(tmp_path):
  work = tmp_path / "w"
  line = one_error(cli("--config", SMOKE, "--workdir", str(work), "--config.train.lr=1e6"),
                   "the loss is not finite at step", "no checkpoint was saved",
                   "config.train.lr (now 1000000.0)")
  assert "max_nonfinite_steps=0" in line
  assert not (work / "checkpoints").exists() or not any(
      d.isdigit() for d in os.listdir(work / "checkpoints"))
  assert not (work / "results.json").exists()


@pytest.mark.slow
def test_a_search_of_other_weights_is_not_resumed(trained, tmp_path):
  """Retrain the supernet in the same work dir with another learning rate: the saved search
  (and its evaluation cache) belong to the old weights and are refused, not mixed in."""
  work = copy_of(trained, tmp_path)
  shutil.rmtree(work / "checkpoints")
  before = {k: v for k, v in snapshot(work).items() if k.startswith(("search", "results"))}
  one_error(cli("--config", SMOKE, "--workdir", str(work), "--config.train.lr=0.03"),
            "belongs to another run", "weights")
  after = {k: v for k, v in snapshot(work).items() if k.startswith(("search", "results"))}
  assert after == before


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_intact_one_resumed(trained, tmp_path):
  work = copy_of(trained, tmp_path)
  steps = sorted(int(d) for d in os.listdir(work / "checkpoints") if d.isdigit())
  last = work / "checkpoints" / str(steps[-1])
  for root, _, files in os.walk(last):        # damage every array file of the latest step
    for f in files:
      if "meta" not in root and not f.endswith(".json"):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.write(b"\0" * 64)
  out = cli("--config", SMOKE, "--workdir", str(work), "--stop_after=train")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from {work / 'checkpoints'}/{steps[-2]}" in out.stdout
  assert "warning:" in out.stdout and f"damaged-{steps[-1]}" in out.stdout
  assert (work / "checkpoints" / f"damaged-{steps[-1]}").is_dir()   # kept, not deleted
  assert str(steps[-1]) in os.listdir(work / "checkpoints")          # saved again


# -- SIGTERM -------------------------------------------------------------------------------------
def test_sigterm_during_the_first_compile_stops_at_once(tmp_path):
  work = tmp_path / "w"
  p = start("--config", SMOKE, "--workdir", str(work), out_dir=tmp_path)
  wait_for(p, lambda: "training 12 steps" in read(p.out))
  time.sleep(0.5)   # inside the training step's first compile (tens of seconds)
  t = time.time()
  p.send_signal(signal.SIGTERM)
  p.wait(timeout=120)
  assert p.returncode == 143, read(p.err)[-3000:]
  assert time.time() - t < 10
  assert "stopped by SIGTERM with nothing unsaved" in read(p.err)
  assert "Traceback" not in read(p.err)
  assert not (work / ".lock").exists()


def test_sigterm_during_the_search_exits_143_and_resumes_to_the_same_results(trained, tmp_path):
  work = tmp_path / "w"
  p = start("--config", SMOKE, "--workdir", str(work), out_dir=tmp_path)
  wait_for(p, lambda: "A2 generation 0/" in read(p.out))
  p.send_signal(signal.SIGTERM)
  p.wait(timeout=120)
  assert p.returncode == 143, read(p.err)[-3000:]
  assert "Traceback" not in read(p.err) and "stopped by SIGTERM" in read(p.err)
  assert not (work / "results.json").exists() and (work / "search" / "family.json").exists()
  out = cli("--config", SMOKE, "--workdir", str(work))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed the search" in out.stdout
  same_results(trained, work)


NSGA2 = os.path.join(ROOT, "configs", "digits_scarlet.py:smoke")
TUNAS_SMOKE = os.path.join(ROOT, "configs", "digits_tunas.py:smoke")


@pytest.mark.slow   # ~4 min each (two runs, two compiles); CI runs the family search's case above
@pytest.mark.parametrize("job", ["nsga2", "tunas"])
def test_sigterm_in_the_nsga2_and_tunas_searches_exits_143_and_resumes(job, tmp_path):
  """SIGTERM inside each job's own search loop (NSGA-II between generations, TuNAS in its
  alternating weight/policy steps): status 143, one ``stopped`` line, no traceback, the lock
  released, and the same command finishes the run from the saved state."""
  work = tmp_path / "w"
  if job == "nsga2":   # more generations than the smoke's two: the signal lands mid-search
    args = ("--config", NSGA2, "--workdir", str(work), "--config.search.generations=5")
    started = lambda: "NSGA-II generation 0/" in read(p.out)
  else:                # checkpoints far apart: steps unsaved, a dirty stop
    args = ("--config", TUNAS_SMOKE, "--workdir", str(work), "--config.train.steps=40",
            "--config.train.checkpoint_every=20")
    started = lambda: "] 4/40" in read(p.err)      # the progress bar after step 4
  p = start(*args, out_dir=tmp_path)
  wait_for(p, started)
  p.send_signal(signal.SIGTERM)
  p.wait(timeout=300)
  err = read(p.err)
  assert p.returncode == 143, err[-3000:]
  assert "Traceback" not in err and "stopped by SIGTERM" in err, err[-3000:]
  assert not (work / "results.json").exists() and not (work / ".lock").exists()
  out = cli(*args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert ("resumed the NSGA-II search" if job == "nsga2" else "resumed from") in out.stdout
  assert json.loads((work / "results.json").read_text())["chosen" if job == "nsga2" else "models"]


def same_results(ref, work):
  """results.json equal up to timings; plots byte for byte."""
  def strip(r):
    r = json.loads(json.dumps(r))
    r["search"].pop("seconds", None)
    r["training"].pop("seconds_this_process", None)
    r["training"].pop("resumed_from", None)
    return r
  a, b = (json.loads((d / "results.json").read_text()) for d in (ref, work))
  assert strip(a) == strip(b)
  for png in ("top1_vs_macs.png", "nfr_matrix.png"):
    assert (ref / png).read_bytes() == (work / png).read_bytes(), png


# -- the work dir --------------------------------------------------------------------------------
def test_one_run_per_work_dir_and_a_stale_lock_is_taken_over(trained, tmp_path):
  work = copy_of(trained, tmp_path)
  before = snapshot(work)
  lock = work / ".lock"
  lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "started": "now"}))          # a live owner: this test process
  one_error(cli("--config", SMOKE, "--workdir", str(work)), "work dir in use by process",
            str(os.getpid()))
  lock.unlink()
  assert snapshot(work) == before
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  lock.write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "started": "then"}))
  out = cli("--config", SMOKE, "--workdir", str(work), "--stop_after=train")
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"taking over the lock of process {dead}" in out.stdout
  assert not lock.exists()


@pytest.mark.slow
def test_two_concurrent_runs(tmp_path):
  work = tmp_path / "w"
  a = start("--config", SMOKE, "--workdir", str(work), "--stop_after=train", out_dir=tmp_path)
  wait_for(a, lambda: (work / ".lock").exists())
  b = cli("--config", SMOKE, "--workdir", str(work), "--stop_after=train")
  one_error(b, "work dir in use by process", str(a.pid))
  a.wait(timeout=600)
  assert a.returncode == 0, read(a.err)[-3000:]
  steps = [json.loads(ln)["step"] for ln in (work / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(set(steps))


@pytest.mark.parametrize("kind", ["file", "below_a_file"])
def test_unusable_work_dirs(tmp_path, kind):
  f = tmp_path / "f"
  f.write_text("not a directory")
  work = f if kind == "file" else f / "sub"
  one_error(cli("--config", SMOKE, "--workdir", str(work)), "--workdir: cannot create")
  assert f.read_text() == "not a directory"


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_intact_checkpoint_resumes(tmp_path):
  mnt = tmp_path / "tiny"
  mnt.mkdir()
  # Room for the first checkpoint but not for the second (smoke: about 3 MB each).
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  try:
    work = mnt / "w"
    out = cli("--config", SMOKE, "--workdir", str(work), "--stop_after=train")
    line = one_error(out, "cannot save the checkpoint of step")
    assert "no space left on device" in line and "step 4 is intact" in line
    subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)   # room again
    out = cli("--config", SMOKE, "--workdir", str(work), "--stop_after=train")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from" in out.stdout and "(step 4/12" in out.stdout
  finally:
    subprocess.run(["umount", str(mnt)], capture_output=True)


# -- data ----------------------------------------------------------------------------------------
def packed_cifar(path, n_train=24, n_test=12, labels=None, bad_jpeg=None, object_arrays=False):
  """A tiny file in the packed-JPEG CIFAR-10 format (32x32 noise images)."""
  from PIL import Image

  rng = np.random.default_rng(0)

  def split(n):
    blobs = []
    for i in range(n):
      buf = io.BytesIO()
      Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(buf, "JPEG")
      blobs.append(b"\x00garbage" * 8 if bad_jpeg == i else buf.getvalue())
    off = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), np.uint8), off

  tj, to = split(n_train)
  sj, so = split(n_test)
  tl = np.arange(n_train) % 10 if labels is None else labels
  arrays = dict(train_jpeg=tj, train_offsets=to, train_labels=tl.astype(np.uint8),
                test_jpeg=sj, test_offsets=so, test_labels=(np.arange(n_test) % 10).astype(np.uint8))
  if object_arrays:
    arrays["train_labels"] = np.array([None] * n_train, dtype=object)
  np.savez(path, **arrays)
  return path


def data_fault(tmp_path, path, *parts, extra=()):
  work = tmp_path / "work"
  one_error(cli("--config", CIFAR, "--workdir", str(work), f"--config.data.path={path}",
                "--config.data.val_size=4", *extra), *parts)
  assert not work.exists()


def test_damaged_cifar_files(tmp_path):
  good = packed_cifar(str(tmp_path / "good.npz"))
  crc = tmp_path / "crc.npz"
  raw = bytearray(open(good, "rb").read())
  raw[len(raw) // 3] ^= 0xFF           # inside the first member's data: a CRC error
  crc.write_bytes(bytes(raw))
  data_fault(tmp_path, crc, "config.data.path", "not a readable .npz file")
  data_fault(tmp_path, packed_cifar(str(tmp_path / "obj.npz"), object_arrays=True),
             "not a readable .npz file")
  data_fault(tmp_path, packed_cifar(str(tmp_path / "jpeg.npz"), bad_jpeg=3),
             "train: image 3 cannot be decoded")
  data_fault(tmp_path, packed_cifar(str(tmp_path / "lab.npz"), labels=np.arange(24) % 12),
             "train_labels must be class indices 0..9, found 0..11")
  (tmp_path / "cachefile").write_text("x")
  data_fault(tmp_path, good, "config.data.cache_dir", "is not a directory",
             extra=(f"--config.data.cache_dir={tmp_path / 'cachefile'}",))


def test_a_damaged_decode_cache(tmp_path):
  from regnas_jax import data

  good = packed_cifar(str(tmp_path / "good.npz"))
  cache = tmp_path / "cache"
  data.decode_packed_jpeg(good, str(cache))
  (f,) = os.listdir(cache)
  (cache / f).write_bytes((cache / f).read_bytes()[:200])
  before = snapshot(cache)
  data_fault(tmp_path, good, "damaged decode cache", extra=(f"--config.data.cache_dir={cache}",))
  assert snapshot(cache) == before


# -- saved search states -------------------------------------------------------------------------
def test_a_saved_search_with_bad_content(trained, tmp_path):
  work = copy_of(trained, tmp_path)
  state = json.loads((work / "search" / "family.json").read_text())
  state["members"][0]["arch"]["kernel"] = [9] * len(state["members"][0]["arch"]["kernel"])
  (work / "search" / "family.json").write_text(json.dumps(state))
  before = snapshot(work)
  one_error(cli("--config", SMOKE, "--workdir", str(work)), "search/family.json",
            "damaged saved state")
  assert snapshot(work) == before


def test_a_damaged_latency_file(tmp_path):
  work = tmp_path / "w"
  work.mkdir()
  (work / "latency.json").write_text('{"identity": {"space"')
  before = snapshot(work)
  one_error(cli("--config", TUNAS, "--workdir", str(work)), "latency.json", "not JSON")
  assert snapshot(work) == before
