"""Progress output for long loops, JSON-lines metric logs and TensorBoard event files.

:class:`Progress` draws a one-line bar redrawn in place on a terminal, and prints a plain line
every ``every`` updates (and at the end) when the output is a file or pipe, so logs stay short.
:class:`MetricsLog` appends one JSON object per line; when a run resumes at step ``s`` the lines
for steps after ``s`` (written after the checkpoint the run resumes from) are dropped first.
With a TensorBoard directory it also writes the numbers of each record there
(:class:`EventWriter`).  Only the writer process (:func:`regnas_jax.fs.is_writer`) writes.

TensorBoard without TensorFlow: ``clu.metric_writers`` cannot be imported without TensorFlow
(its package ``__init__`` imports the TF summary writer), and tensorboardX would add a
dependency that writes only to local files and S3.  An event file is a TFRecord file of
``Event`` protocol buffers; :class:`EventWriter` encodes the three messages a scalar needs by
hand (a few dozen lines, no dependency) and writes through :mod:`regnas_jax.fs`, so ``gs://``
works too.  Its interface is clu's ``MetricWriter`` subset we use (``write_scalars``,
``flush``, ``close``).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

from regnas_jax import fs


def fmt_time(s: float) -> str:
  """Seconds as ``M:SS`` or ``H:MM:SS``."""
  s = int(max(s, 0))
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
  """``with Progress(total, 'train') as p: p.update(step, loss=..., acc=...)``.

  The time left is the steps left at the rate of the steps that ran an already compiled
  program: the seconds and steps :meth:`compiled` reports (a program's first, compile-bound
  steps) are left out of the rate, so a run whose first step compiled for a minute does not
  promise minutes more than it needs.  ``clock``: the time source (seconds)."""

  def __init__(self, total: int, desc: str, start: int = 0, every: int = 10, stream=None,
               width: int = 24, clock=time.time):
    self.total, self.desc, self.start, self.every, self.width = total, desc, start, every, width
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.clock = clock
    self.t0 = clock()
    self.compile_s, self.compile_steps = 0.0, 0
    self._last = None

  def compiled(self, seconds: float, steps: int) -> None:
    """Seconds and steps since the start spent compiling (totals, not increments)."""
    self.compile_s, self.compile_steps = float(seconds), int(steps)

  def eta(self, n: int) -> float | None:
    """Seconds left after ``n`` steps (class docstring); None while no step has run without a
    compile."""
    run_steps = n - self.start - self.compile_steps
    run_s = self.clock() - self.t0 - self.compile_s
    if run_steps <= 0 or run_s <= 0:
      return None
    return (self.total - n) * run_s / run_steps

  def line(self, n: int, **fields) -> str:
    frac = n / max(self.total, 1)
    done = int(round(frac * self.width))
    el = self.clock() - self.t0
    eta = self.eta(n)
    left = "?" if eta is None and n < self.total else fmt_time(eta or 0.0)
    info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    return (f"{self.desc} [{'#' * done}{'.' * (self.width - done)}] {n}/{self.total} "
            f"{fmt_time(el)}<{left} {info}").rstrip()

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
  """Append-only JSON lines in ``path``; ``truncate_after(step)`` drops later entries.

  ``tensorboard_dir``: also write every number of a record (lists as ``key/i``) as a scalar
  event there.  On an object store (``gs://``, no appending) each write replaces the object
  with all lines so far.  Processes other than the writer write nothing.
  """

  def __init__(self, path: str, tensorboard_dir: str | None = None):
    self.path = path
    self.writer = fs.is_writer()
    self._lines: list[str] | None = None   # object stores: the object's lines
    self.tb = EventWriter(tensorboard_dir) if tensorboard_dir and self.writer else None
    if self.writer:
      fs.makedirs(os.path.dirname(os.path.abspath(path)) if fs.is_local(path)
                  else fs.path(path).parent)

  def _read_lines(self) -> list[str]:
    try:
      text = fs.read_text(self.path)
    except FileNotFoundError:
      return []
    return [ln + "\n" for ln in text.split("\n") if ln]

  def truncate_after(self, step: int) -> None:
    if not self.writer or not fs.exists(self.path):
      return
    keep = []
    for ln in self._read_lines():
      try:
        rec = json.loads(ln)
      except json.JSONDecodeError:
        continue  # a line cut by a kill
      if rec.get("step", -1) <= step:
        keep.append(ln)
    fs.write_text(self.path, "".join(keep))
    self._lines = keep

  def write(self, record: dict) -> None:
    if not self.writer:
      return
    line = json.dumps(record) + "\n"
    if fs.is_local(self.path):
      with open(self.path, "a") as f:
        f.write(line)
    else:
      if self._lines is None:
        self._lines = self._read_lines()
      self._lines.append(line)
      fs.write_text(self.path, "".join(self._lines))
    if self.tb is not None and "step" in record:
      self.tb.write_scalars(int(record["step"]), scalars_of(record))

  def read(self) -> list[dict]:
    if not fs.exists(self.path):
      return []
    return [json.loads(ln) for ln in self._read_lines() if ln.strip()]

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


NOT_SCALARS = ("step", "time", "compile_s", "resolution")   # kept in the JSON lines only


def scalars_of(record: dict) -> dict[str, float]:
  """The numbers of a metrics record as TensorBoard scalars: ``{key: x}`` (a key such as
  ``acc/largest`` is the tag as it is) and ``{key/i: x[i]}`` for lists of numbers.  Left out:
  strings, booleans and :data:`NOT_SCALARS` -- the step, the wall-clock time, compile seconds
  and the step's resolution, which are facts about a record, not curves to chart."""
  out = {}
  for k, v in record.items():
    if k in NOT_SCALARS or isinstance(v, bool):
      continue
    if isinstance(v, (int, float)):
      out[k] = float(v)
    elif isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                     for x in v):
      out.update({f"{k}/{i}": float(x) for i, x in enumerate(v)})
  return out


# -- TensorBoard event files ---------------------------------------------------------------------
def _crc32c_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``, as TFRecord files use it."""
  c = 0xFFFFFFFF
  for b in data:
    c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  c = crc32c(data)
  return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1   # int64 as protobuf encodes it (two's complement)
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited protobuf field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, scalars: dict | None = None,
                 file_version: str | None = None) -> bytes:
  """One ``tensorflow.Event`` message: ``wall_time`` (1, double), ``step`` (2, int64),
  ``file_version`` (3, string) or ``summary`` (5) with one ``Summary.Value`` per scalar
  (``tag`` = 1, ``simple_value`` = 2, float)."""
  msg = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
  if file_version is not None:
    msg += _field(3, file_version.encode())
  if scalars:
    values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
                      for tag, v in scalars.items())
    msg += _field(5, values)
  return msg


def tfrecord(data: bytes) -> bytes:
  """``data`` framed as one TFRecord: length, its masked CRC, data, its masked CRC."""
  n = struct.pack("<Q", len(data))
  return n + struct.pack("<I", _masked_crc(n)) + data + struct.pack("<I", _masked_crc(data))


class EventWriter:
  """Scalars as a TensorBoard event file in ``logdir`` (module docstring), one file per process
  start (``events.out.tfevents.<time>.<host>.<pid><suffix>``, as TensorFlow names them, the
  suffix telling apart the writers of one process; TensorBoard reads all files of a
  directory).  Locally every write is appended and flushed; on an object
  store the object is replaced with everything written so far."""

  def __init__(self, logdir: str, suffix: str = ""):
    fs.makedirs(logdir)
    name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
            f"{suffix}")
    self.path = fs.join(logdir, name)
    self._data = bytearray()
    self._append(tfrecord(encode_event(time.time(), file_version="brain.Event:2")))

  def _append(self, rec: bytes) -> None:
    if fs.is_local(self.path):
      with open(self.path, "ab") as f:
        f.write(rec)
    else:
      self._data += rec
      fs.write_bytes(self.path, bytes(self._data))

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if scalars:
      self._append(tfrecord(encode_event(time.time(), step, scalars)))

  def flush(self) -> None:
    """Every write is on disk when it returns; here for clu's interface."""

  def close(self) -> None:
    self.flush()
