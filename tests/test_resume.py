"""Preemption: kill -9 at a random step or SIGTERM, restart, and end with the same parameters.

Each run is a separate ``run_search.py --stop_after=train`` process on the smoke config; they
share the test run's persistent XLA compilation cache (``conftest.py``), so only the first
process of the run pays the compile.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from regnas_jax.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "digits_mbv3.py:smoke")
TOTAL = 20  # steps; the smoke config checkpoints every 4 and logs every 2


def start(workdir):
  return subprocess.Popen([sys.executable, os.path.join(ROOT, "run_search.py"), "--config", SMOKE,
                           "--workdir", str(workdir), "--stop_after=train",
                           f"--config.train.steps={TOTAL}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  for ln in open(path):
    try:
      out.append(json.loads(ln)["step"])
    except (json.JSONDecodeError, KeyError):
      pass
  return out


def wait_for_step(proc, workdir, step, timeout=400):
  t = time.time()
  while max(logged_steps(workdir), default=0) < step:
    assert proc.poll() is None, proc.communicate()
    assert time.time() - t < timeout, "training made no progress"
    time.sleep(0.05)


def final_arrays(workdir):
  ck = Checkpointer(os.path.join(workdir, "checkpoints"), {})
  try:
    return ck.latest_step(), ck.restore_arrays()
  finally:
    ck.close()


def test_kill9_and_sigterm_resume_to_the_uninterrupted_result(tmp_path):
  ref = start(tmp_path / "ref")
  out, err = ref.communicate(timeout=600)
  assert ref.returncode == 0, err
  total = TOTAL

  # kill -9 at a random logged step after the first checkpoint (saved every 4 steps, before the
  # metrics of later steps are written).
  work = tmp_path / "run"
  kill_at = random.Random().choice([6, 8, 10, 12])
  p = start(work)
  wait_for_step(p, work, kill_at)
  p.send_signal(signal.SIGKILL)
  p.wait()
  ck_step, _ = final_arrays(work)
  assert ck_step is not None and ck_step < total
  stale = max(logged_steps(work))  # lines after ck_step: dropped when the next run resumes

  # SIGTERM: the running step finishes, a checkpoint is saved, exit status 143.
  p = start(work)
  wait_for_step(p, work, stale + 2)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=300)
  resumed_line = [ln for ln in out.splitlines() if "resumed from" in ln]
  if p.returncode == 143:
    assert "stopped by SIGTERM after step" in err
    term_step, _ = final_arrays(work)
    assert term_step > ck_step
  else:  # the run finished before the signal arrived
    assert p.returncode == 0, err
  assert resumed_line and f"step {ck_step}/{total}" in resumed_line[0], out

  p = start(work)
  _, err = p.communicate(timeout=600)
  assert p.returncode == 0, err
  steps = logged_steps(work)
  assert steps == sorted(set(steps)) and steps[-1] == total

  s_ref, a_ref = final_arrays(tmp_path / "ref")
  s_run, a_run = final_arrays(work)
  assert s_ref == s_run == total
  leaves_ref = jax.tree_util.tree_leaves_with_path(a_ref)
  leaves_run = jax.tree.leaves(a_run)
  assert len(leaves_ref) == len(leaves_run) > 50
  for (path, x), y in zip(leaves_ref, leaves_run):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
