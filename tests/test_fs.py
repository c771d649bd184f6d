"""Work-dir files on a non-local file system, and the writer predicate.

``gs://`` is served offline by fsspec's in-memory file system registered for the ``gs``
protocol: ``etils.epath`` routes ``gs://`` paths to fsspec when TensorFlow is absent, so every
call our code makes goes through the same epath/fsspec layer as on Google Cloud Storage (an
object store without appending, ``O_EXCL`` or atomic renames), and a leftover ``open``/``os``
call on such a path fails.  What this cannot reach is orbax's array writes: orbax hands ``gs://``
to TensorStore's own GCS driver, which needs the network (checkpoints and exports on ``gs://``
are not tested here).
"""

import io
import json
import os
import sys

import jax
import numpy as np
import pytest

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

from regnas_jax import export, fs, persist, report  # noqa: E402
from regnas_jax.jobs.base import JobContext, write_results  # noqa: E402
from regnas_jax.errors import StateError  # noqa: E402
from regnas_jax.progress import MetricsLog  # noqa: E402


class FakeGcs(MemoryFileSystem):
  """``gs://bucket/key`` in memory (a store of its own, apart from fsspec's ``memory://``)."""

  protocol = ("gs", "gcs")
  store: dict = {}
  pseudo_dirs = [""]

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for p in ("gs://", "gcs://"):
      path = path.removeprefix(p)
    path = path.lstrip("/").rstrip("/")
    return "/" + path if path else ""


@pytest.fixture
def gcs():
  """A fresh in-memory ``gs://`` for one test."""
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, FakeGcs, clobber=True)
  FakeGcs.store.clear()
  FakeGcs.pseudo_dirs[:] = [""]
  yield FakeGcs()
  FakeGcs.store.clear()


def test_a_work_dir_on_a_store_without_its_file_system_is_one_error(monkeypatch):
  """``gs://`` without gcsfs installed: fsspec's ImportError becomes one error line naming the
  work dir and the package, before anything is written."""
  from regnas_jax import jobs
  from regnas_jax.configs import digits_mbv3

  registry = sys.modules["fsspec.registry"]                 # (both restored after the test)
  monkeypatch.delitem(registry._registry, "gs", raising=False)
  monkeypatch.setitem(registry.known_implementations, "gs", {
      "class": "no_such_gcsfs_module.GCSFileSystem",
      "err": "Please install gcsfs to access Google Storage"})
  with pytest.raises(StateError, match=r"^--workdir: cannot create gs://bucket/run \(Please "
                                       r"install gcsfs"):
    jobs.run(digits_mbv3.get_config("smoke"), "gs://bucket/run")


def test_paths_tell_local_from_object_stores(tmp_path):
  assert fs.is_local(str(tmp_path)) and fs.is_local("runs/x") and not fs.is_local("gs://b/run")
  assert fs.join("gs://b/run", "search", "a.json") == "gs://b/run/search/a.json"
  assert fs.join("runs/x", "a.json") == os.path.join("runs/x", "a.json")


def test_json_state_round_trip_on_gs(gcs):
  path = "gs://bucket/run/search/state.json"
  persist.save_state(path, {"seed": 1}, gen=3)
  assert gcs.exists("/bucket/run/search/state.json")
  assert not gcs.exists("/bucket/run/search/state.json.tmp")   # one object write, no rename
  assert persist.read_state(path, {"seed": 1})["gen"] == 3
  with pytest.raises(StateError, match=r"belongs to another run \(seed: saved 1, now 2\)"):
    persist.read_state(path, {"seed": 2})
  assert persist.read_state("gs://bucket/run/none.json", {"seed": 1}) is None


def test_metrics_log_rewrites_the_object_on_gs(gcs):
  log = MetricsLog("gs://bucket/run/metrics.jsonl", "gs://bucket/run/tensorboard")
  for s in (2, 4, 6):
    log.write({"step": s, "loss": float(s)})
  log.truncate_after(4)
  log.write({"step": 6, "loss": 0.5})
  text = gcs.cat_file("/bucket/run/metrics.jsonl").decode()
  assert [json.loads(ln)["step"] for ln in text.splitlines()] == [2, 4, 6]
  again = MetricsLog("gs://bucket/run/metrics.jsonl")   # a resumed run appends to what is there
  again.write({"step": 8, "loss": 0.1})
  assert [r["step"] for r in again.read()] == [2, 4, 6, 8]
  events = gcs.ls("/bucket/run/tensorboard", detail=False)
  assert len(events) == 1 and "tfevents" in events[0] and gcs.size(events[0]) > 0


def test_the_work_dir_lock_on_gs(gcs):
  lock = persist.WorkdirLock("gs://bucket/run").acquire()
  rec = json.loads(gcs.cat_file("/bucket/run/.lock"))
  assert rec["pid"] == os.getpid()
  gcs.pipe_file("/bucket/run/.lock", json.dumps({"pid": 1, "host": "elsewhere"}).encode())
  with pytest.raises(StateError, match="work dir in use by process 1 on host elsewhere"):
    persist.WorkdirLock("gs://bucket/run").acquire()
  gcs.pipe_file("/bucket/run/.lock", json.dumps(rec).encode())
  lock.release()
  assert not gcs.exists("/bucket/run/.lock")


def test_a_stale_lock_on_gs_is_taken_over(gcs):
  import socket
  import subprocess
  import sys

  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  gcs.pipe_file("/bucket/run/.lock", json.dumps(
      {"pid": int(dead.stdout), "host": socket.gethostname()}).encode())
  warnings = []
  with persist.WorkdirLock("gs://bucket/run", warn=warnings.append):
    assert json.loads(gcs.cat_file("/bucket/run/.lock"))["pid"] == os.getpid()
  assert "taking over the lock" in warnings[0]


def test_a_plot_and_the_results_tail_on_gs(gcs):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  report.save_figure(fig, "gs://bucket/run/plot.png", dpi=50)
  plt.close(fig)
  assert gcs.cat_file("/bucket/run/plot.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_evaluation_cache_on_gs(gcs):
  from regnas_jax.search.family import EvalCache
  from regnas_jax.spaces import get_space

  space = get_space("ofa_mbv3", width_mult=0.25, resolutions=(8,), num_classes=10)
  pop = jax.tree.map(lambda *x: np.stack(x), space.max_arch(), space.min_arch())
  correct = lambda p: np.arange(2 * 5).reshape(2, 5) % 3 == 0   # noqa: E731
  cache = EvalCache(space, correct, "gs://bucket/run/search/cache.npz", {"k": 1})
  cache(pop)
  cache.save()
  again = EvalCache(space, lambda p: pytest.fail("scored again"),
                    "gs://bucket/run/search/cache.npz", {"k": 1})
  np.testing.assert_array_equal(again(pop), correct(pop))


def test_a_process_other_than_0_writes_nothing(tmp_path, monkeypatch):
  """The writer predicate gates results, plots, exports, state files, metrics and the lock."""
  monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
  assert not fs.is_writer()
  persist.save_state(str(tmp_path / "state.json"), {"a": 1}, x=1)
  log = MetricsLog(str(tmp_path / "m" / "metrics.jsonl"), str(tmp_path / "tb"))
  log.write({"step": 1, "loss": 1.0})
  log.truncate_after(0)
  with persist.WorkdirLock(str(tmp_path)):
    pass
  ctx = JobContext(cfg=None, workdir=str(tmp_path), space=None, net=None, dataset=None,
                   log=lambda m: None)
  write_results(ctx, {"a": 1}, "| table |", plots={"p.png": lambda p: fs.write_text(p, "x")})
  export.save_subnet(str(tmp_path / "subnets" / "A1"), None, None, {}, {})
  assert os.listdir(tmp_path) == []
  monkeypatch.undo()
  assert fs.is_writer()
  persist.save_state(str(tmp_path / "state.json"), {"a": 1}, x=1)
  assert os.listdir(tmp_path) == ["state.json"]


def test_write_bytes_replaces_a_local_file_as_a_whole(tmp_path):
  p = str(tmp_path / "d" / "f.bin")
  fs.write_bytes(p, b"old")
  fs.write_bytes(p, b"new")
  assert fs.read_bytes(p) == b"new" and sorted(os.listdir(tmp_path / "d")) == ["f.bin"]
  assert io.BytesIO(fs.read_bytes(p)).read() == b"new"


def test_readers_of_process_0s_files_meet_at_barriers(tmp_path, monkeypatch):
  """With several processes, a saved state and an evaluation cache are read between two
  barriers (process 0's earlier write is complete; its next one waits for every reader); with
  one process there is no barrier."""
  from jax.experimental import multihost_utils
  from regnas_jax.search.family import EvalCache

  met = []
  monkeypatch.setattr(multihost_utils, "sync_global_devices", met.append)
  path = str(tmp_path / "state.json")
  persist.save_state(path, {"a": 1}, x=1)
  assert persist.read_state(path, {"a": 1})["x"] == 1 and met == []
  monkeypatch.setattr(jax, "process_count", lambda *a, **k: 2)
  assert persist.read_state(path, {"a": 1})["x"] == 1
  assert persist.read_state(str(tmp_path / "none.json"), {"a": 1}) is None
  EvalCache(None, None, str(tmp_path / "cache.npz"))
  assert met == [f"read {path}", f"read {path} done",
                 f"read {tmp_path / 'none.json'}", f"read {tmp_path / 'none.json'} done",
                 f"read {tmp_path / 'cache.npz'}", f"read {tmp_path / 'cache.npz'} done"]
