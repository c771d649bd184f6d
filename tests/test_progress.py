"""Progress lines and the JSON-lines metric log."""

import io
import json

from regnas_jax.progress import MetricsLog, Progress


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
