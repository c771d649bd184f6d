"""Reading torch.save files without torch: both formats, dtypes, strides and offsets, and the
refusals (code-running pickles, truncated and foreign files), each one line.

The fixtures were written by PyTorch itself (tests/fixtures/make_ofa_fixtures.py); the
expected arrays beside them were written by numpy from the same tensors.
"""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from regnas_jax.errors import DataError
from regnas_jax.io import torch_state

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FILES = ["torch_tensors.pth", "torch_tensors_legacy.pth"]


def one_line(e) -> str:
  msg = str(e.value)
  assert "\n" not in msg and msg
  return msg


@pytest.mark.parametrize("name", FILES)
def test_both_formats_give_torch_s_tensors(name):
  obj = torch_state.load(os.path.join(FIX, name))
  assert obj["epoch"] == 3 and obj["best_acc"] == 0.5
  sd = obj["state_dict"]
  assert isinstance(sd, collections.OrderedDict)
  with np.load(os.path.join(FIX, "torch_tensors.npz")) as z:
    assert list(sd) == list(z.files)
    for k in z.files:
      got = sd[k]
      assert got.shape == z[k].shape, k
      np.testing.assert_array_equal(np.asarray(got, z[k].dtype), z[k], err_msg=k)
  dtypes = {k: sd[k].dtype.name for k in ("conv.weight", "half", "bf16", "long")}
  assert dtypes == {"conv.weight": "float32", "half": "float16", "bf16": "bfloat16",
                    "long": "int64"}
  assert sd["long"][2] == 2 ** 40
  # The transposed view and the slice of a larger storage came back as their values.
  np.testing.assert_array_equal(sd["transposed"], sd["transposed"].T.T)
  assert sd["transposed"].flags["C_CONTIGUOUS"]


def test_state_dict_unwrapped_and_counters_dropped():
  sd = torch_state.load_state_dict(os.path.join(FIX, "torch_tensors.pth"))
  assert "bn.num_batches_tracked" not in sd and "conv.weight" in sd
  assert all(isinstance(v, np.ndarray) for v in sd.values())


def _zip(tmp_path, payload: bytes, name="evil.pth") -> str:
  path = tmp_path / name
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", payload)
    z.writestr("evil/version", "3\n")
  return str(path)


class _Runs:
  """Pickles to a call of ``exec`` that writes a marker file."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
  payload = pickle.dumps({"state_dict": collections.OrderedDict(w=_Runs(tmp_path / "ran"))}, 2)
  pickle.loads(payload)                    # plain pickle runs it: the payload is live
  assert (tmp_path / "ran").exists()
  (tmp_path / "ran").unlink()
  path = _zip(tmp_path, payload)
  with pytest.raises(DataError) as e:
    torch_state.load(path)
  assert "refused to unpickle builtins.exec" in one_line(e) and path in one_line(e)
  assert not (tmp_path / "ran").exists()
  # The legacy format's pickles go through the same unpickler (here: its very first pickle).
  legacy = tmp_path / "evil_legacy.pth"
  legacy.write_bytes(payload)
  with pytest.raises(DataError, match="refused to unpickle builtins.exec"):
    torch_state.load(str(legacy))
  assert not (tmp_path / "ran").exists()


def test_a_pickled_module_is_refused_by_name(tmp_path):
  # What torch.save(model) writes: the model's class, never imported here.
  payload = (b"\x80\x02cofa.imagenet_classification.elastic_nn.networks.ofa_mbv3\n"
             b"OFAMobileNetV3\nq\x00)\x81q\x01.")
  with pytest.raises(DataError) as e:
    torch_state.load(_zip(tmp_path, payload))
  assert "ofa.imagenet_classification.elastic_nn.networks.ofa_mbv3.OFAMobileNetV3" in one_line(e)


@pytest.mark.parametrize("name", FILES)
def test_truncated_files_are_refused(tmp_path, name):
  data = open(os.path.join(FIX, name), "rb").read()
  for cut in (len(data) // 2, len(data) - 20):
    path = tmp_path / f"cut{cut}_{name}"
    path.write_bytes(data[:cut])
    with pytest.raises(DataError) as e:
      torch_state.load(str(path))
    assert str(path) in one_line(e)
    assert any(w in one_line(e) for w in ("truncated", "damaged")), one_line(e)


def test_foreign_and_missing_files_are_refused(tmp_path):
  (tmp_path / "empty").write_bytes(b"")
  (tmp_path / "text").write_bytes(b"hello, not a checkpoint\n" * 10)
  np.savez(tmp_path / "arrays.npz", a=np.zeros(3))  # a zip, but not torch.save's
  for name, what in (("empty", "empty file"), ("text", "not a PyTorch checkpoint"),
                     ("arrays.npz", "not a torch.save checkpoint"), ("absent", "cannot read")):
    with pytest.raises(DataError) as e:
      torch_state.load(str(tmp_path / name))
    assert what in one_line(e)


def test_a_tensor_past_its_storage_is_refused(tmp_path):
  # A well-formed pickle whose first tensor's storage was cut short.
  src = zipfile.ZipFile(os.path.join(FIX, "torch_tensors.pth"))
  prefix = next(n for n in src.namelist() if n.endswith("data.pkl"))[:-len("data.pkl")]
  out = tmp_path / "bad.pth"
  with zipfile.ZipFile(out, "w") as z:
    for n in src.namelist():
      data = src.read(n)
      if n == prefix + "data/0":   # conv.weight's storage: keep only 2 of its 108 floats
        data = data[:8]
      z.writestr(n, data)
  with pytest.raises(DataError) as e:
    torch_state.load(str(out))
  assert "storage holds 8 bytes, expected 432" in one_line(e)


def test_no_state_dict_is_an_error(tmp_path):
  payload = pickle.dumps({"epoch": 3}, 2)
  with pytest.raises(DataError, match="no state dict"):
    torch_state.load_state_dict(_zip(tmp_path, payload))
  assert torch_state.load(_zip(tmp_path, payload, "b.pth")) == {"epoch": 3}
