"""TensorBoard event files read back without TensorFlow (imported as ``tbevents``): TFRecord
framing with its masked CRC-32C checked by a bitwise CRC written here, and the ``Event``
messages decoded by protobuf from a descriptor built here -- not by a mirror image of
:mod:`regnas_jax.progress`'s encoder."""

import os
import struct

import pytest


def event_class():
  """``tensorflow.Event`` (the fields TensorBoard reads for scalars) as a protobuf class."""
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


def crc32c_bitwise(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c ^= b
    for _ in range(8):
      c = (c >> 1) ^ (0x82F63B78 * (c & 1))
  return c ^ 0xFFFFFFFF


def records(path):
  """The TFRecord payloads of ``path``, each CRC checked (TFRecord's masked CRC-32C)."""
  def masked(d):
    c = crc32c_bitwise(d)
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


def events(path):
  """The ``Event`` messages of one event file."""
  Event = event_class()
  return [Event.FromString(r) for r in records(path)]


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` of every event file in ``logdir``, as TensorBoard would
  chart them (files in name order, events in file order)."""
  out: dict[str, list] = {}
  for name in sorted(os.listdir(logdir)):
    assert name.startswith("events.out.tfevents."), name
    evs = events(os.path.join(logdir, name))
    assert evs[0].file_version == "brain.Event:2"
    for e in evs[1:]:
      for v in e.summary.value:
        out.setdefault(v.tag, []).append((e.step, v.simple_value))
  return out
