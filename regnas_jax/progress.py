"""Progress output for long loops and JSON-lines metric logs.

:class:`Progress` draws a one-line bar redrawn in place on a terminal, and prints a plain line
every ``every`` updates (and at the end) when the output is a file or pipe, so logs stay short.
:class:`MetricsLog` appends one JSON object per line; when a run resumes at step ``s`` the lines
for steps after ``s`` (written after the checkpoint the run resumes from) are dropped first.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _fmt_time(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
  """``with Progress(total, 'train') as p: p.update(step, loss=..., acc=...)``."""

  def __init__(self, total: int, desc: str, start: int = 0, every: int = 10, stream=None,
               width: int = 24):
    self.total, self.desc, self.start, self.every, self.width = total, desc, start, every, width
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.t0 = time.time()
    self._last = None

  def line(self, n: int, **fields) -> str:
    frac = n / max(self.total, 1)
    done = int(round(frac * self.width))
    el = time.time() - self.t0
    rate = (n - self.start) / el if el > 0 else 0.0
    eta = (self.total - n) / rate if rate > 0 else 0.0
    info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    return (f"{self.desc} [{'#' * done}{'.' * (self.width - done)}] {n}/{self.total} "
            f"{_fmt_time(el)}<{_fmt_time(eta)} {info}").rstrip()

  def update(self, n: int, **fields) -> None:
    self._last = (n, fields)
    if self.tty:
      self.stream.write("\r" + self.line(n, **fields) + "\x1b[K")
      self.stream.flush()
    elif n == self.total or (n - self.start) % self.every == 0:
      self.stream.write(self.line(n, **fields) + "\n")
      self.stream.flush()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.tty and self._last is not None:
      self.stream.write("\n")
      self.stream.flush()


class MetricsLog:
  """Append-only JSON lines in ``path``; ``truncate_after(step)`` drops later entries."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    keep = []
    with open(self.path) as f:
      for ln in f:
        try:
          rec = json.loads(ln)
        except json.JSONDecodeError:
          continue  # a line cut by a kill
        if rec.get("step", -1) <= step:
          keep.append(ln if ln.endswith("\n") else ln + "\n")
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(keep)
    os.replace(tmp, self.path)

  def write(self, record: dict) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(ln) for ln in f if ln.strip()]
