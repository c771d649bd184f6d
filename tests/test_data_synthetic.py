"""The generated image folder (``python -m regnas_jax.data.synthetic``): the folder loader reads
it as written (classes, counts, shapes), its images are deterministic and class-dependent, a
second run leaves it alone, bad arguments are one ``error:`` line and exit status 2, and the
ImageNet smoke variants run on it through the command line as the README has them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from regnas_jax import data
from regnas_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tree(root) -> dict:
  """``{relative path: bytes}`` of every file under ``root``."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), root)] = fh.read()
  return out


def test_loader_reads_the_generated_folder(tmp_path):
  root = str(tmp_path / "imgs")
  s = synthetic.generate(root, classes=3, per_class=(5, 2), size=(20, 28), seed=1)
  assert s == {"classes": 3, "per_class": [5, 2], "size": [20, 28], "seed": 1, "written": True}
  assert sorted(os.listdir(root)) == ["synthetic.json", "train", "val"]
  ds = data.load_folder(root, image_size=16, val_size=3)
  assert (ds.num_classes, ds.class_names) == (3, ("class00", "class01", "class02"))
  assert (len(ds.train) + len(ds.val), len(ds.val), len(ds.test)) == (15, 3, 6)
  x, y = ds.test.get(np.arange(6))
  assert x.shape == (6, 16, 16, 3) and x.dtype == np.uint8
  assert list(y) == [0, 0, 1, 1, 2, 2]
  image, label = ds.train.raw(0)
  assert image.shape == (20, 28, 3) and 0 <= label < 3
  # The same settings write the same files; another seed other pixels.
  again = str(tmp_path / "again")
  synthetic.generate(again, classes=3, per_class=(5, 2), size=(20, 28), seed=1)
  assert tree(again) == tree(root)
  other = str(tmp_path / "other")
  synthetic.generate(other, classes=3, per_class=(5, 2), size=(20, 28), seed=2)
  assert tree(other).keys() == tree(root).keys()
  assert tree(other)["val/class00/0000.jpg"] != tree(root)["val/class00/0000.jpg"]


def channel_covariance(images: np.ndarray) -> np.ndarray:
  """``(N, 9)``: each image's 3x3 covariance of its RGB channels over its pixels."""
  x = images.reshape(len(images), -1, 3).astype(np.float64)
  x -= x.mean(1, keepdims=True)
  return np.einsum("npc,npd->ncd", x, x).reshape(len(images), 9) / x.shape[1]


def test_images_depend_on_their_class():
  """A nearest-centroid classifier on the channel covariance (the class's colour: a grating's
  mean is grey) fitted on training images names the class of most validation images."""
  classes, size = 10, (48, 64)
  def split(k, n):
    return np.stack([synthetic.class_image(0, k, c, i, classes, size) for c in range(classes)
                     for i in range(n)]), np.repeat(np.arange(classes), n)
  (xt, yt), (xv, yv) = split(0, 8), split(1, 4)
  ft, fv = channel_covariance(xt), channel_covariance(xv)
  centroids = np.stack([ft[yt == c].mean(0) for c in range(classes)])
  guess = np.argmin(((fv[:, None] - centroids[None]) ** 2).sum(-1), 1)
  assert (guess == yv).mean() >= 0.9      # chance: 0.1


def test_a_second_run_keeps_the_folder_and_other_folders_are_refused(tmp_path):
  root = str(tmp_path / "imgs")
  synthetic.generate(root, classes=2, per_class=(2, 1), size=(8, 8))
  before = tree(root)
  assert synthetic.generate(root, classes=2, per_class=(2, 1), size=(8, 8))["written"] is False
  assert tree(root) == before
  with pytest.raises(data.DataError, match="generated with other settings"):
    synthetic.generate(root, classes=2, per_class=(2, 1), size=(8, 8), seed=1)
  foreign = tmp_path / "mine"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("keep")
  with pytest.raises(data.DataError, match="holds other files"):
    synthetic.generate(str(foreign))
  assert os.listdir(foreign) == ["notes.txt"]
  (tmp_path / "empty").mkdir()                      # an empty folder is filled
  assert synthetic.generate(str(tmp_path / "empty"), classes=2, per_class=(1, 1),
                            size=(8, 8))["written"]
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]     # no temporary trees left


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: DIR"),
    (["D", "--classes", "x"], "argument --classes: invalid int value"),
    (["D", "--classes", "0"], "--classes: must be an integer in [1, 1000]"),
    (["D", "--per_class", "8"], "--per_class: must be two integers separated by a comma"),
    (["D", "--per_class", "8,0"], "--per_class: must be two positive integers"),
    (["D", "--size", "4,64"], "--size: must be two integers H,W in [8, 1024]"),
    (["D", "--seed", "-1"], "--seed: must be an integer >= 0"),
    (["D", "--colour", "red"], "unrecognized arguments: --colour red"),
    (["FILE"], "exists and is not a folder"),
])
def test_bad_arguments_are_one_error_line(tmp_path, capsys, argv, message):
  (tmp_path / "FILE").write_text("x")
  argv = [str(tmp_path / a) if a in ("D", "FILE") else a for a in argv]
  try:
    rc = synthetic.main(argv)
  except SystemExit as e:           # argparse's own faults
    rc = e.code
  err = capsys.readouterr().err
  assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
  assert message in err, err
  assert sorted(os.listdir(tmp_path)) == ["FILE"]          # nothing written


def run(*args):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)


def test_imagenet_smoke_variant_runs_on_a_generated_folder(tmp_path):
  """The README's two commands: generate the folder, run ``imagenet_ofa_mbv3:smoke`` on it (the
  cheapest ImageNet smoke variant: imported weights, no training); without
  ``--config.data.path`` the smoke variant stops with one error line naming the generator."""
  images, work = str(tmp_path / "tiny_imagenet"), tmp_path / "work"
  out = run("-m", "regnas_jax.data.synthetic", images)
  assert out.returncode == 0 and out.stdout.startswith(f"wrote {images}: 10 classes"), out.stderr
  search = ["run_search.py", "--config", "imagenet_ofa_mbv3:smoke", "--workdir", str(work)]
  out = run(*search)
  errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
  assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
  assert "config.data.path" in errors[0] and "regnas_jax.data.synthetic DIR" in errors[0]
  assert not work.exists()
  out = run(*search, f"--config.data.path={images}")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "data folder (64 train / 16 val / 40 test)" in out.stdout + out.stderr
  with open(work / "results.json") as f:
    results = json.load(f)
  members = results["family"]["members"]
  assert [m["name"] for m in members] == ["A1", "A2"]
  assert all(0 <= m["test_top1"] <= 1 for m in members)
