"""Progress lines, the JSON-lines metric log and its TensorBoard event files."""

import io
import json
import os

import pytest
import tbevents

from regnas_jax import runtime
from regnas_jax.progress import MetricsLog, Progress, crc32c


def test_progress_prints_every_n_and_at_the_end_when_not_a_terminal():
  out = io.StringIO()
  with Progress(10, "train", every=4, stream=out) as p:
    for i in range(1, 11):
      p.update(i, loss=1.0 / i)
  lines = out.getvalue().splitlines()
  assert [ln.split()[2] for ln in lines] == ["4/10", "8/10", "10/10"]
  assert lines[-1].startswith("train [" + "#" * 24 + "]") and "loss=0.1" in lines[-1]


def test_progress_redraws_in_place_on_a_terminal():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  out = Tty()
  with Progress(3, "x", stream=out) as p:
    for i in range(1, 4):
      p.update(i)
  text = out.getvalue()
  assert text.count("\r") == 3 and text.endswith("\n") and "3/3" in text


def test_metrics_log_truncates_after_a_resume_step(tmp_path):
  log = MetricsLog(str(tmp_path / "w" / "metrics.jsonl"))
  for s in (2, 4, 6, 8):
    log.write({"step": s, "loss": float(s)})
  with open(log.path, "a") as f:
    f.write('{"step": 10, "lo')            # a line cut by kill -9
  log.truncate_after(5)
  assert [r["step"] for r in log.read()] == [2, 4]
  log.write({"step": 6, "loss": 0.5})
  assert [json.loads(ln)["step"] for ln in open(log.path)] == [2, 4, 6]


# -- TensorBoard event files, read back with protobuf's own decoder (tests/tbevents.py) ----
def test_crc32c_matches_the_standard_check_value():
  assert crc32c(b"123456789") == 0xE3069283 == tbevents.crc32c_bitwise(b"123456789")


def test_the_event_file_holds_the_logged_scalars(tmp_path):
  """Numbers become scalars under their keys (``acc/largest`` as it is, lists as ``key/i``);
  the step, the time, compile seconds and the resolution stay in the JSON lines only."""
  log = MetricsLog(str(tmp_path / "metrics.jsonl"), str(tmp_path / "tb"))
  log.write({"step": 2, "phase": "sandwich", "loss": 1.5, "acc/largest": 0.25, "time": 1e9,
             "compile_s": 12.5, "resolution": 8, "grads": [0.5, 0.75]})
  log.write({"step": 4, "phase": "sandwich", "loss": 0.75, "acc/largest": 0.5, "time": 1e9,
             "images_per_s": None, "compile_s": 0.0, "resolution": 8})
  log.close()
  (name,) = os.listdir(tmp_path / "tb")
  events = tbevents.events(str(tmp_path / "tb" / name))
  assert events[0].file_version == "brain.Event:2"
  got = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
  assert got == {(2, "loss"): 1.5, (2, "acc/largest"): 0.25, (2, "grads/0"): 0.5,
                 (2, "grads/1"): 0.75, (4, "loss"): 0.75, (4, "acc/largest"): 0.5}
  assert [r["step"] for r in log.read()] == [2, 4]   # the JSON lines as before
  assert log.read()[0]["compile_s"] == 12.5 and log.read()[0]["resolution"] == 8


class FakeClock:
  """Seconds that pass only when a test says so."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_time_left_leaves_the_compile_bound_steps_out():
  """A 60 s compile in the first step, then 1 s per step: after 10 of 100 steps 90 s are
  left (at the rate of the 9 compiled steps), not the 7 min that 70 s per 10 steps would
  give; a second program's first step (another compile) is left out as well."""
  clock = FakeClock()
  compiles = runtime.CompileClock(clock=clock)
  out = io.StringIO()
  bar = Progress(100, "train", every=10, stream=out, clock=clock)
  assert bar.eta(0) is None

  def step(seconds, first=False):
    def run():
      clock.now += seconds
    if first:
      compiles.timed_first(run, items=32)
    else:
      run()

  n = 0
  for i in range(10):
    step(60.0 if i == 0 else 1.0, first=i == 0)
    n += 1
    bar.compiled(compiles.spent_s, compiles.spent_steps)
    bar.update(n)
  assert compiles.spent_s == 60.0 and compiles.spent_steps == 1
  assert bar.eta(10) == pytest.approx(90.0)
  assert out.getvalue().splitlines()[-1].split()[3] == "1:09<1:30"
  step(30.0, first=True)     # step 11 compiles another program (e.g. the next phase)
  bar.compiled(compiles.spent_s, compiles.spent_steps)
  assert bar.eta(11) == pytest.approx(89.0)
  assert Progress(10, "x", clock=clock).eta(0) is None
