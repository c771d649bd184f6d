"""Datasets in the formats people have: CIFAR-10/100 archives as distributed (binary and python,
archive and folder), image folders, packed ``.npz`` files and the converter that writes them,
tfds without downloads, and the user's own arrays and sources from Python.

Every file is built here in a tmp dir the way its authors lay it out (the python pickles as
Python 2's cPickle wrote them); what a loader returns is checked against the arrays written.
Two smoke searches run through the command line (a CIFAR-10 binary archive and an image folder);
bad files of each kind end the command with one ``error:`` line and status 2.
"""

import importlib.util
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from regnas_jax import data
from regnas_jax.data import cifar, convert, pipeline
from regnas_jax.errors import ConfigError, StateError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "digits_mbv3.py:smoke")
N_BATCH, N_TEST = 40, 60      # CIFAR-10: 5 training batches of 40 (200 images), 60 test images


# -- Writers of the distributed formats ------------------------------------------------------------
class Py2Pickler(pickle._Pickler):
  """Pickles as Python 2's cPickle did for the CIFAR batches: protocol 2, ``str`` and ``bytes``
  as (SHORT_)BINSTRING, numpy's reconstruction under its old module name."""
  dispatch = dict(pickle._Pickler.dispatch)

  def _binstring(self, raw: bytes, obj):
    n = len(raw)
    self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256
                else pickle.BINSTRING + struct.pack("<i", n)) + raw)
    self.memoize(obj)

  def save_bytes(self, obj):
    self._binstring(obj, obj)

  def save_str(self, obj):
    self._binstring(obj.encode("latin1"), obj)

  def save_global(self, obj, name=None):
    if getattr(obj, "__name__", "") == "_reconstruct":
      self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
      self.memoize(obj)
    else:
      super().save_global(obj, name)

  dispatch[bytes] = save_bytes
  dispatch[str] = save_str


def py2_pickle(obj) -> bytes:
  buf = io.BytesIO()
  Py2Pickler(buf, protocol=2).dump(obj)
  return buf.getvalue()


def planes(images: np.ndarray) -> np.ndarray:
  """``(N, 32, 32, 3)`` -> ``(N, 3072)``: CIFAR's red, green and blue planes."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def cifar_arrays(seed: int, n_train: int, n_test: int, classes: int) -> dict:
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in (("train", n_train), ("test", n_test)):
    out[f"{split}_x"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    out[f"{split}_y"] = rng.integers(0, classes, n).astype(np.int32)
  return out


def write_cifar(root, a: dict, name: str, kind: str) -> str:
  """The folder an archive of ``name`` ('cifar10'/'cifar100') and ``kind`` ('binary'/'python')
  unpacks to, under ``root``, holding the arrays ``a``; returns its parent (what
  ``tar -C root -czf`` archives)."""
  sub = {("cifar10", "binary"): "cifar-10-batches-bin",
         ("cifar10", "python"): "cifar-10-batches-py",
         ("cifar100", "binary"): "cifar-100-binary", ("cifar100", "python"): "cifar-100-python"}
  d = os.path.join(root, sub[name, kind])
  os.makedirs(d)
  if name == "cifar10":
    n = len(a["train_y"]) // 5
    batches = {f"data_batch_{i + 1}": slice(i * n, (i + 1) * n) for i in range(5)}
    parts = [(k, "train", s) for k, s in batches.items()] + [("test_batch", "test", slice(None))]
    names = [f"class{i}" for i in range(10)]
  else:
    parts = [("train", "train", slice(None)), ("test", "test", slice(None))]
    names = [f"fine{i}" for i in range(100)]
  for member, split, s in parts:
    x, y = planes(a[f"{split}_x"][s]), a[f"{split}_y"][s]
    if kind == "binary":
      head = y[:, None] if name == "cifar10" else np.stack([y % 20, y], 1)
      with open(os.path.join(d, member + ".bin"), "wb") as f:
        f.write(np.concatenate([head.astype(np.uint8), x], 1).tobytes())
    else:
      key = "labels" if name == "cifar10" else "fine_labels"
      batch = {"batch_label": f"{member} of 1", key: [int(v) for v in y], "data": x,
               "filenames": [f"img_{i}.png" for i in range(len(y))]}
      if name == "cifar100":
        batch["coarse_labels"] = [int(v) % 20 for v in y]
      with open(os.path.join(d, member), "wb") as f:
        f.write(py2_pickle(batch))
  if kind == "binary":
    meta = "batches.meta.txt" if name == "cifar10" else "fine_label_names.txt"
    with open(os.path.join(d, meta), "w") as f:
      f.write("\n".join(names) + "\n\n")
  else:
    meta = {"label_names": names} if name == "cifar10" else {"fine_label_names": names}
    with open(os.path.join(d, "batches.meta" if name == "cifar10" else "meta"), "wb") as f:
      f.write(py2_pickle(meta))
  return d


def tar_gz(folder_path: str, out: str) -> str:
  with tarfile.open(out, "w:gz") as t:
    t.add(folder_path, arcname=os.path.basename(folder_path))
  return out


def write_image_folder(root, classes=("cat", "dog", "emu"), per_class=(6, 2), size=(32, 32),
                       seed=0, ext=".png") -> dict:
  """``root/train/<class>/i.png`` and ``root/val/<class>/i.png``; ``{(split, path): image}``."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in zip(("train", "val"), per_class):
    for c in classes:
      os.makedirs(os.path.join(root, split, c))
      for i in range(n):
        img = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        path = os.path.join(root, split, c, f"{i:03d}{ext}")
        Image.fromarray(img).save(path)
        out[split, path] = img
  return out


def whole_train(ds):
  """The training split as loaded, holdout put back: ``(images, labels)`` in file order."""
  n = len(ds.train) + len(ds.val)
  tr, va = data.holdout_split(n, len(ds.val), 0)
  x = np.zeros((n,) + ds.train.get([0])[0].shape[1:], np.uint8)
  y = np.zeros(n, np.int32)
  for idx, src in ((tr, ds.train), (va, ds.val)):
    x[idx], y[idx] = src.get(np.arange(len(src)))
  return x, y


@pytest.fixture(scope="module")
def c10():
  return cifar_arrays(0, 5 * N_BATCH, N_TEST, 10)


@pytest.fixture(scope="module")
def c100():
  return cifar_arrays(1, 150, 50, 100)


# -- CIFAR as distributed --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["binary", "python"])
def test_cifar10_archive_and_folder_give_the_written_arrays(tmp_path, c10, kind):
  d = write_cifar(str(tmp_path), c10, "cifar10", kind)
  archive = tar_gz(d, str(tmp_path / f"cifar-10-{kind}.tar.gz"))
  for path in (archive, d, str(tmp_path)):     # the archive, its folder, the folder above it
    ds = data.load_cifar("cifar10", path, val_size=20)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (180, 20, N_TEST)
    assert ds.num_classes == 10 and ds.image_size == 32 and ds.mean == data.CIFAR10_MEAN
    x, y = whole_train(ds)
    np.testing.assert_array_equal(x, c10["train_x"])
    np.testing.assert_array_equal(y, c10["train_y"])
    np.testing.assert_array_equal(ds.test.images, c10["test_x"])
    np.testing.assert_array_equal(ds.test.labels, c10["test_y"])
    assert ds.class_names == tuple(f"class{i}" for i in range(10))


@pytest.mark.parametrize("kind", ["binary", "python"])
def test_cifar100_reads_the_fine_labels(tmp_path, c100, kind):
  d = write_cifar(str(tmp_path), c100, "cifar100", kind)
  archive = tar_gz(d, str(tmp_path / f"cifar-100-{kind}.tar.gz"))
  for path in (archive, d):
    ds = data.load_cifar("cifar100", path, val_size=10)
    assert ds.num_classes == 100 and ds.mean == data.CIFAR100_MEAN
    x, y = whole_train(ds)
    np.testing.assert_array_equal(x, c100["train_x"])
    np.testing.assert_array_equal(y, c100["train_y"])
    np.testing.assert_array_equal(ds.test.labels, c100["test_y"])
    assert ds.class_names[:2] == ("fine0", "fine1") and len(ds.class_names) == 100
  # The other dataset's name: the error says which one the archive holds.
  with pytest.raises(data.DataError, match="it holds cifar100 .* --config.data.name=cifar100"):
    data.load_cifar("cifar10", archive)


def test_packed_npz_is_still_read_under_cifar10(tmp_path):
  import helpers

  path = str(tmp_path / "c.npz")
  arrays, decoded = helpers.packed_npz(path)
  ds = data.load_cifar("cifar10", path, val_size=4)
  np.testing.assert_array_equal(ds.test.images, decoded["test"])
  assert ds.name == "cifar10" and ds.num_classes == 10


def test_pickle_that_would_run_code_is_refused_unrun(tmp_path):
  sentinel = tmp_path / "ran"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {sentinel}",))

  blob = pickle.dumps({b"data": Evil(), b"labels": [1]}, protocol=2)
  with pytest.raises(data.DataError, match=r"asks for (posix|os)\.system.*refused"):
    cifar.safe_unpickle(blob, "x")
  assert not sentinel.exists()
  # Python 3's own pickles of a batch (protocol 2 and the newest) read as well.
  a = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
  for proto in (2, pickle.HIGHEST_PROTOCOL):
    out = cifar.safe_unpickle(pickle.dumps({b"data": a, "labels": [1, 2]}, protocol=proto), "x")
    np.testing.assert_array_equal(out[b"data"], a)
  with pytest.raises(data.DataError, match="asks for builtins.eval"):
    cifar.safe_unpickle(b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.", "x")


def test_malformed_cifar_files_are_one_data_error(tmp_path, c10):
  d = write_cifar(str(tmp_path / "bin"), c10, "cifar10", "binary")
  f = os.path.join(d, "data_batch_3.bin")
  raw = open(f, "rb").read()
  open(f, "wb").write(raw[:-100])
  with pytest.raises(data.DataError, match=r"data_batch_3.bin: 122820 bytes are not a whole "
                                           r"number of 3073-byte records"):
    data.load_cifar("cifar10", d)
  os.remove(f)
  with pytest.raises(data.DataError, match="missing data_batch_3.bin"):
    data.load_cifar("cifar10", d)
  p = write_cifar(str(tmp_path / "py"), c10, "cifar10", "python")
  open(os.path.join(p, "data_batch_2"), "wb").write(py2_pickle(["not", "a", "dict"]))
  with pytest.raises(data.DataError, match="data_batch_2: not a CIFAR batch: the pickle holds a "
                                           "list"):
    data.load_cifar("cifar10", p)
  open(os.path.join(p, "data_batch_2"), "wb").write(py2_pickle({"data": [1, 2], "labels": []}))
  with pytest.raises(data.DataError, match="b'data' is list"):
    data.load_cifar("cifar10", p)
  arch = tar_gz(write_cifar(str(tmp_path / "t"), c10, "cifar10", "binary"),
                str(tmp_path / "c.tar.gz"))
  open(arch, "r+b").truncate(os.path.getsize(arch) // 2)
  with pytest.raises(data.DataError, match="c.tar.gz: not a readable tar archive"):
    data.load_cifar("cifar10", arch)
  junk = tmp_path / "junk.bin"
  junk.write_bytes(b"\x00" * 100)
  with pytest.raises(data.DataError, match="neither a packed .npz file nor a CIFAR archive"):
    data.load_cifar("cifar10", str(junk))


# -- Image folders ---------------------------------------------------------------------------------
def test_image_folder_lists_sorted_classes_and_decodes_on_read(tmp_path):
  root = str(tmp_path / "imgs")
  written = write_image_folder(root, size=(40, 48))
  # A different size and extension case, a stray file and a hidden one are fine.
  odd = np.random.default_rng(5).integers(0, 256, (24, 24, 3), dtype=np.uint8)
  Image.fromarray(odd).save(os.path.join(root, "train", "dog", "zz.PNG"))
  written["train", os.path.join(root, "train", "dog", "zz.PNG")] = odd
  open(os.path.join(root, "train", "dog", "notes.txt"), "w").write("x")
  open(os.path.join(root, "train", "dog", ".hidden.png"), "w").write("x")
  ds = data.load_folder(root, image_size=16, val_size=4)
  assert ds.class_names == ("cat", "dog", "emu") and ds.num_classes == 3
  assert (len(ds.train) + len(ds.val), len(ds.test)) == (19, 6) and ds.image_size == 16
  full = ds.train.base
  for i in range(len(full)):
    img, label = full.raw(i)
    path = full.path(i)
    np.testing.assert_array_equal(img, written["train", path])
    assert ds.class_names[label] == os.path.basename(os.path.dirname(path))
  x, y = ds.test.get(np.arange(6))
  assert x.shape == (6, 16, 16, 3) and x.dtype == np.uint8 and y.tolist() == [0, 0, 1, 1, 2, 2]
  # get(): the centre square resized; at the stored size it is the image itself.
  same = data.load_folder(root, image_size=24, val_size=4).train.base
  i = [same.path(k) for k in range(len(same))].index(os.path.join(root, "train", "dog", "zz.PNG"))
  np.testing.assert_array_equal(same.get([i])[0][0], odd)


def test_malformed_image_folders_are_one_data_error(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(data.DataError, match="has no train/ folder.*DIR/train/<class>/"):
    data.load_folder(str(empty), 16)
  (empty / "train").mkdir()
  (empty / "val").mkdir()
  with pytest.raises(data.DataError, match="train has no class folders"):
    data.load_folder(str(empty), 16)
  root = str(tmp_path / "f")
  write_image_folder(root)
  os.makedirs(os.path.join(root, "val", "zebra"))
  with pytest.raises(data.DataError, match="val/zebra is not a class of the training split"):
    data.load_folder(root, 16, val_size=2)
  os.rmdir(os.path.join(root, "val", "zebra"))
  os.makedirs(os.path.join(root, "train", "owl"))
  with pytest.raises(data.DataError, match="train/owl holds no images"):
    data.load_folder(root, 16, val_size=2)
  os.rmdir(os.path.join(root, "train", "owl"))
  # Flat validation images (ImageNet's, before sorting): named as such.
  flat = str(tmp_path / "flat")
  write_image_folder(flat)
  for c in ("cat", "dog", "emu"):
    for f in os.listdir(os.path.join(flat, "val", c)):
      os.replace(os.path.join(flat, "val", c, f), os.path.join(flat, "val", c + f))
    os.rmdir(os.path.join(flat, "val", c))
  with pytest.raises(data.DataError, match="its 6 images are not sorted into class folders"):
    data.load_folder(flat, 16, val_size=2)
  # An unreadable image: named when it is read (the first of a split already when loading).
  bad = os.path.join(root, "train", "dog", "001.png")
  open(bad, "wb").write(b"not an image")
  ds = data.load_folder(root, 16, val_size=2)
  with pytest.raises(data.DataError, match=f"{bad} cannot be decoded"):
    ds.train.base.get(np.arange(len(ds.train.base)))
  open(os.path.join(root, "train", "cat", "000.png"), "wb").write(b"")
  with pytest.raises(data.DataError, match="cat/000.png cannot be decoded"):
    data.load_folder(root, 16, val_size=2)


def test_folder_source_in_the_grain_pipeline(tmp_path):
  """Inception crops of a folder by step, per-host shards and a worker process resuming from
  the saved iterator state."""
  root = str(tmp_path / "f")
  write_image_folder(root, per_class=(8, 1), size=(20, 28))
  ds = data.load_folder(root, image_size=16, val_size=4)
  maker = pipeline.BatchMaker(ds.train, 8, 3, "inception", (12, 16))
  whole = maker(5)
  r = pipeline.step_resolution(3, (12, 16), 5)
  assert whole["images"].shape == (8, r, r, 3)
  halves = [pipeline.BatchMaker(ds.train, 8, 3, "inception", (12, 16), p, 2)(5) for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate([h["images"] for h in halves]), whole["images"])
  ref = [maker(s) for s in range(6)]
  tb = pipeline.TrainBatches(maker, 0, 6, workers=1, prefetch=1)
  first = [tb.next() for _ in range(2)]
  saved = tb.state()
  tb.close()
  again = pipeline.TrainBatches(maker, 0, 6, workers=1, state=saved)
  rest = [again.next() for _ in range(4)]
  again.close()
  for (s, b), want in zip(first + rest, ref):
    assert s == int(want["step"])
    np.testing.assert_array_equal(b["images"], want["images"])
    np.testing.assert_array_equal(b["labels"], want["labels"])


# -- tfds without downloads ------------------------------------------------------------------------
def test_tfds_does_not_download_unless_asked(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    noop = tfds.core.DatasetBuilder.download_and_prepare   # mock_data's stand-in
    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", autospec=True,
                           side_effect=noop) as prepare:
      ds = data.load_tfds("mnist", image_size=8, val_size=2)
      assert len(ds.train) == 10 and prepare.call_count == 0
      data.load_tfds("mnist", image_size=8, val_size=2, download=True)
      assert prepare.call_count == 2    # the train and the test split
  # Unprepared, download off: how to prepare it, and nothing written to the data dir.
  empty = tmp_path / "tfds"
  empty.mkdir()
  with pytest.raises(data.DataError, match=f"'mnist' is not prepared in {empty} .*tfds build "
                                           f"mnist --data_dir {empty} --file_format=array_record"):
    data.load_tfds("mnist", str(empty))
  assert [f for _, _, fs in os.walk(empty) for f in fs] == []


# -- The converter ---------------------------------------------------------------------------------
def test_converter_round_trips(tmp_path, c10, c100):
  d = write_cifar(str(tmp_path / "src"), c10, "cifar10", "python")
  archive = tar_gz(d, str(tmp_path / "cifar-10-python.tar.gz"))
  out = str(tmp_path / "c10.npz")
  assert convert.main([archive, out]) == 0
  z = np.load(out, allow_pickle=False)
  assert z["class_names"].tolist() == [f"class{i}" for i in range(10)]
  ds = data.load_cifar("cifar10", out, val_size=20)
  x, y = whole_train(ds)
  np.testing.assert_array_equal(x, c10["train_x"])
  np.testing.assert_array_equal(y, c10["train_y"])
  np.testing.assert_array_equal(ds.test.images, c10["test_x"])
  lazy = data.load_cifar("cifar10", out, val_size=20, decode="on_demand")   # per read: the same
  np.testing.assert_array_equal(lazy.test.get(np.arange(N_TEST))[0], c10["test_x"])
  # CIFAR-100 from its binary folder, read as cifar100 and as a generic packed file.
  d100 = write_cifar(str(tmp_path / "src100"), c100, "cifar100", "binary")
  out100 = str(tmp_path / "c100.npz")
  convert.convert(d100, out100)
  for ds in (data.load_cifar("cifar100", out100, val_size=10),
             data.load_packed_npz(out100, val_size=10)):
    assert ds.num_classes == 100
    np.testing.assert_array_equal(ds.test.images, c100["test_x"])
    np.testing.assert_array_equal(whole_train(ds)[1], c100["train_y"])
  # An image folder: its files' own bytes, or centre squares at --image_size.
  root = str(tmp_path / "f")
  written = write_image_folder(root, ext=".jpg")
  out_f = str(tmp_path / "f.npz")
  convert.convert(root, out_f)
  ds = data.load_packed_npz(out_f, val_size=3)
  want = [np.asarray(Image.open(p).convert("RGB")) for (s, p) in sorted(written) if s == "val"]
  np.testing.assert_array_equal(ds.test.images, np.stack(want))
  assert ds.class_names == ("cat", "dog", "emu")
  convert.convert(root, out_f, image_size=16)
  assert data.load_packed_npz(out_f, val_size=3).test.images.shape == (6, 16, 16, 3)


# -- From Python -----------------------------------------------------------------------------------
def test_from_arrays_carves_the_holdout_like_the_other_sources(c10):
  tr, te = (c10["train_x"], c10["train_y"]), (c10["test_x"], c10["test_y"])
  ds = data.from_arrays(tr, te, val_size=20, seed=3)
  t, v = data.holdout_split(200, 20, 3)
  np.testing.assert_array_equal(ds.val.images, c10["train_x"][v])
  np.testing.assert_array_equal(ds.train.labels, c10["train_y"][t])
  assert ds.num_classes == 10 and ds.image_size == 32 and len(ds.test) == N_TEST
  np.testing.assert_allclose(ds.mean, c10["train_x"].reshape(-1, 3).mean(0) / 255, atol=1e-6)
  assert len(data.from_arrays(tr, te).val) == 20            # default: 10% of train
  grey = data.from_arrays((c10["train_x"][..., 0], c10["train_y"]), te)
  assert grey.train.images.shape[1:] == (32, 32, 3)
  with pytest.raises(data.DataError, match="must be uint8 pixels"):
    data.from_arrays((c10["train_x"] / 255.0, c10["train_y"]), te)
  with pytest.raises(data.DataError, match=r"train: labels must be class indices 0..4"):
    data.from_arrays(tr, te, num_classes=5)
  with pytest.raises(data.DataError, match="must be 200 integers"):
    data.from_arrays((c10["train_x"], c10["train_y"][:5]), te)


def test_from_sources_reads_records_on_demand(c10):
  recs = [{"image": x, "label": y} for x, y in zip(c10["train_x"], c10["train_y"])]
  pairs = list(zip(c10["test_x"], c10["test_y"]))
  ds = data.from_sources(recs, pairs, 10, val_size=20)
  assert ds.image_size == 32 and (len(ds.train), len(ds.val), len(ds.test)) == (180, 20, 60)
  x, y = whole_train(ds)
  np.testing.assert_array_equal(x, c10["train_x"])
  np.testing.assert_array_equal(y, c10["train_y"])
  np.testing.assert_array_equal(ds.test.get(np.arange(3))[0], c10["test_x"][:3])
  small = data.from_sources(recs, pairs, 10, image_size=16)
  assert small.train.get([0])[0].shape == (1, 16, 16, 3)
  with pytest.raises(data.DataError, match=r"train\[0\] is not a record with 'img'"):
    data.from_sources(recs, pairs, 10, image_key="img")
  with pytest.raises(data.DataError, match="must support len"):
    data.from_sources(iter(recs), pairs, 10)


# -- The command line ------------------------------------------------------------------------------
def cli(*args):
  return subprocess.run([sys.executable, os.path.join(ROOT, "run_search.py"), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)


def one_error(out, *parts):
  assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  for p in parts:
    assert p in errors[0], errors[0]


def test_bad_files_through_the_command_line(tmp_path, c10):
  """A malformed file of each kind (binary, python, image folder; the other faults of each are
  checked in-process above): one ``error:`` line naming the file, status 2, no work dir, and the
  pickle that would run code is refused unrun."""
  sentinel = tmp_path / "ran"
  b = write_cifar(str(tmp_path / "b"), c10, "cifar10", "binary")
  with open(os.path.join(b, "test_batch.bin"), "r+b") as f:
    f.truncate(3073 * 7 + 11)
  e = write_cifar(str(tmp_path / "e"), c10, "cifar10", "python")
  evil = (b"\x80\x02cos\nsystem\nX" + struct.pack("<I", len(f"touch {sentinel}"))
          + f"touch {sentinel}".encode() + b"\x85R.")
  open(os.path.join(e, "data_batch_4"), "wb").write(evil)
  write_image_folder(str(tmp_path / "img"))
  open(os.path.join(tmp_path, "img", "train", "cat", "000.png"), "wb").write(b"\xff\xd8junk")
  cases = [
      ("cifar10", b, "test_batch.bin: 21522 bytes are not a whole number of 3073-byte records"),
      ("cifar10", e, "data_batch_4: the pickle asks for os.system"),
      ("folder", tmp_path / "img", "cat/000.png cannot be decoded"),
  ]
  for name, path, msg in cases:
    work = tmp_path / "work"
    one_error(cli("--config", SMOKE, "--workdir", str(work), f"--config.data.name={name}",
                  f"--config.data.path={path}", "--config.data.val_size=20"),
              "config.data.path", msg)
    assert not work.exists()
  assert not sentinel.exists()
  out = subprocess.run([sys.executable, "-m", "regnas_jax.data.convert", e,
                        str(tmp_path / "o.npz")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
  one_error(out, "source:", "os.system")
  assert not (tmp_path / "o.npz").exists() and not sentinel.exists()


@pytest.mark.parametrize("source", ["cifar10_binary_archive", "image_folder"])
def test_smoke_training_through_the_command_line(tmp_path, c10, source):
  """``--config.data.name/path`` of a CIFAR archive and of an image folder reach a command-line
  run: the data are read and the smoke supernet trains on them (``--stop_after=train``).  The
  readers' arrays are checked in-process above, and the search on a user's dataset in
  ``test_jobs_run_on_a_dataset_from_python``; the whole command-line run in test_run_search.py."""
  if source == "cifar10_binary_archive":
    path = tar_gz(write_cifar(str(tmp_path), c10, "cifar10", "binary"),
                  str(tmp_path / "cifar-10-binary.tar.gz"))
    args, name = ["--config.data.name=cifar10"], "cifar10"
  else:
    path = str(tmp_path / "imgs")
    # ten classes and 32 px, as in the CIFAR run: its training step, from the cache
    write_image_folder(path, classes=tuple("abcdefghij"), per_class=(10, 3), size=(36, 30),
                       ext=".jpg")
    args = ["--config.data.name=folder", "--config.data.image_size=32",
            "--config.input.augment=inception"]
    name = "folder"
  work = tmp_path / "work"
  out = cli("--config", SMOKE, "--workdir", str(work), f"--config.data.path={path}",
            "--config.data.val_size=20", "--config.space.num_classes=10", "--stop_after=train",
            *args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert os.path.isfile(work / "checkpoints" / "12" / "commit_success.txt")
  assert f"data {name} (" in out.stdout + out.stderr
  assert "trained 12 steps" in out.stdout + out.stderr


def test_jobs_run_on_a_dataset_from_python(tmp_path, c10):
  """``jobs.run(cfg, workdir, dataset=...)`` runs the smoke search on the user's arrays (32 px,
  10 classes and CIFAR's constants: the CLI runs' training step, from the compilation cache); the
  work dir then belongs to that data -- other arrays are refused, naming the fingerprint."""
  from regnas_jax import jobs

  spec = importlib.util.spec_from_file_location("digits_mbv3", SMOKE.split(":")[0])
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config("smoke")
  train, test = (c10["train_x"], c10["train_y"]), (c10["test_x"], c10["test_y"])
  ds = data.from_arrays(train, test, 10, val_size=20, name="mine", mean=data.CIFAR10_MEAN,
                        std=data.CIFAR10_STD)
  work = str(tmp_path / "work")
  lines = []
  res = jobs.run(cfg, work, dataset=ds, log=lines.append)
  assert len(res["family"]["members"]) == 3 and os.path.isfile(os.path.join(work, "results.json"))
  assert any("data mine (180 train / 20 val / 60 test)" in ln for ln in lines)
  assert cfg.data.name == "digits"          # the caller's config is left as it was
  flipped = (c10["train_x"][:, ::-1], c10["train_y"])
  other = data.from_arrays(flipped, test, 10, val_size=20, name="mine", mean=data.CIFAR10_MEAN,
                           std=data.CIFAR10_STD)
  with pytest.raises(StateError, match="data.fingerprint"):
    jobs.run(cfg, work, dataset=other, log=lines.append)
  three = data.from_arrays((train[0], train[1] % 3), (test[0], test[1] % 3), name="mine")
  with pytest.raises(ConfigError, match="config.space.num_classes: mine has 3 classes, got 10"):
    jobs.prepare(cfg, work, dataset=three)
  with pytest.raises(ConfigError, match="dataset: a regnas_jax.data.Dataset is needed"):
    jobs.prepare(cfg, work, dataset=train)


def test_download_and_cache_dir_leave_run_identities_unchanged():
  """Work dirs saved before ``config.data.download`` existed resume: the identity of a config
  with the key equals the one without it (as for ``cache_dir``)."""
  import ml_collections

  from regnas_jax import identity, spaces
  from regnas_jax.training import supernet as train_sn

  spec = importlib.util.spec_from_file_location("digits_mbv3", SMOKE.split(":")[0])
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config("smoke")
  assert cfg.data.download is False
  without = ml_collections.ConfigDict(cfg.to_dict())
  del without.data["download"], without.data["cache_dir"]
  sp = spaces.get_space(**cfg.space.to_dict())
  phases = train_sn.build_phases(cfg.train, sp)
  for build in (lambda c: identity.supernet(c, sp, phases),
                lambda c: identity.search(c, sp, "weights"),
                lambda c: identity.exact(c, steps=4, seed=0, resolution=8, fd=None,
                                         teacher_resolution=None)):
    assert build(cfg) == build(without)
