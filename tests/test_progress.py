"""Progress lines, the JSON-lines metric log and its TensorBoard event files."""

import io
import json
import os
import struct

import pytest

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


# -- TensorBoard event files, read back with protobuf's own decoder ----------------------------
def _event_class():
  """``tensorflow.Event`` (the fields TensorBoard reads for scalars) from a descriptor built
  here: decoding goes through protobuf, not through our encoder's mirror image."""
  pytest.importorskip("google.protobuf")
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

  F = descriptor_pb2.FieldDescriptorProto
  f = descriptor_pb2.FileDescriptorProto(name="regnas_test_event.proto", package="tbtest")
  value = f.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
  value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
  summary = f.message_type.add(name="Summary")
  summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".tbtest.Value",
                    label=F.LABEL_REPEATED)
  event = f.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
  event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
  event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
  event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".tbtest.Summary",
                  label=F.LABEL_OPTIONAL)
  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("tbtest.Event"))


def _crc32c_bitwise(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c ^= b
    for _ in range(8):
      c = (c >> 1) ^ (0x82F63B78 * (c & 1))
  return c ^ 0xFFFFFFFF


def _records(path):
  """The TFRecord payloads of ``path``, each CRC checked (TFRecord's masked CRC-32C)."""
  def masked(d):
    c = _crc32c_bitwise(d)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  data, out, i = open(path, "rb").read(), [], 0
  while i < len(data):
    n = struct.unpack("<Q", data[i:i + 8])[0]
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked(data[i:i + 8])
    payload = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == masked(payload)
    out.append(payload)
    i += 16 + n
  return out


def test_crc32c_matches_the_standard_check_value():
  assert crc32c(b"123456789") == 0xE3069283 == _crc32c_bitwise(b"123456789")


def test_the_event_file_holds_the_logged_scalars(tmp_path):
  Event = _event_class()
  log = MetricsLog(str(tmp_path / "metrics.jsonl"), str(tmp_path / "tb"))
  log.write({"step": 2, "phase": "sandwich", "loss": 1.5, "acc": [0.25, 0.5], "time": 1e9})
  log.write({"step": 4, "phase": "sandwich", "loss": 0.75, "acc": [0.5, 0.75], "time": 1e9,
             "images_per_s": None})
  log.close()
  (name,) = os.listdir(tmp_path / "tb")
  events = [Event.FromString(r) for r in _records(str(tmp_path / "tb" / name))]
  assert events[0].file_version == "brain.Event:2"
  got = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
  assert got == {(2, "loss"): 1.5, (2, "acc/0"): 0.25, (2, "acc/1"): 0.5,
                 (4, "loss"): 0.75, (4, "acc/0"): 0.5, (4, "acc/1"): 0.75}
  assert [r["step"] for r in log.read()] == [2, 4]   # the JSON lines beside the events
