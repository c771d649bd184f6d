"""REG-NAS's own setting in the OFA-MobileNetV3 space: OFA's released ImageNet supernet, searched.

  # once: OFA's supernet (see README, "OFA's pretrained supernets"), converted without torch
  python -m regnas_jax.convert ofa_mbv3 ofa_mbv3_d234_e346_k357_w1.2 runs/ofa_mbv3_w1.2
  # Table 1: A1 = MB-R0-150, then A2 at 300 MMACs with R2 + inclusion, R2, R0 and random search
  python run_search.py --config configs/imagenet_ofa_mbv3.py \\
      --config.supernet.init_from=runs/ofa_mbv3_w1.2 --config.search.compare=True

The supernet is OFA's ``ofa_mbv3_d234_e346_k357_w1.2`` (kernel 3/5/7, expand 3/4/6, depth 2/3/4,
width 1.2), the one OFA's tutorial searches with its [150, 600] MFLOPs range, at the tutorial's
resolutions 160..224 (OFA trained w1.2 for 160-224).  ``supernet.init_from`` (the converted
directory or the downloaded file itself) gives its weights; ``train.steps=0`` uses them as they
are (a positive ``train.steps`` fine-tunes them with the settings below).  ``--config.space.
width_mult=1.0`` with the w1.0 supernet searches OFA's other MobileNetV3 (128-224 px).

The family: A1, the reference, searched for top-1 alone (R0) under 150 MMACs (OFA's "MFLOPs");
A2 under 300 MMACs with the reward R2 (top-1 minus NFR against A1) and the weight-inclusion
constraint (A2 contains A1).  ``search.compare=True`` also searches A2 with R2 alone, with R0 (the
"R0" row) and by random search, all against the same A1.  Evolution: OFA's settings (population
100, 25 parents, half mutants / half crossovers, mutation probability 0.1, resolution mutation
0.5, 500 generations).  Every candidate is scored for real: BN statistics re-calibrated on 2,000
training images (OFA's), top-1 and negative flips on a fixed holdout of 10,000 ImageNet training
images (OFA's ``valid_size``); the test split is ImageNet's validation set.  Data: ImageNet
prepared for TensorFlow Datasets (``imagenet2012``; ``tfds build imagenet2012`` with the archives
in its manual dir), read through ``tfds.data_source``.

``:smoke`` runs the same job on a CPU in a minute on tfds mock data (``imagenette``, 10 classes:
the e2e test wraps it in ``tfds.testing.mock_data``) from the random-weight OFA checkpoint of the
test fixtures (width 0.35, 10 classes, 40 px), with a population of 4 for one generation.
"""

import os

import ml_collections

from regnas_jax.defaults import runtime_defaults, score_defaults, search_defaults, train_defaults
from regnas_jax.defaults import input_defaults, mesh_defaults

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "fixtures")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "imagenet_ofa_mbv3"
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name="ofa_mbv3", width_mult=1.2, stem="imagenet", num_classes=1000,
      resolutions=(160, 176, 192, 208, 224), kernel_choices=(3, 5, 7), expand_choices=(3, 4, 6),
      depth_choices=(2, 3, 4)))
  c.supernet = ml_collections.ConfigDict(dict(
      depthwise_impl="auto", kernel_transform=True, dtype="float32", dropout_rate=0.1,
      init_from=""))  # OFA's weights: a converted directory or OFA's checkpoint file
  c.data = ml_collections.ConfigDict(dict(
      name="tfds", path="", tfds_name="imagenet2012", tfds_dir="", image_size=224,
      val_size=10000, split_seed=0, cache_dir=""))
  c.input = input_defaults()
  c.train = train_defaults()
  # steps=0: OFA's weights as they are.  For fine-tuning (steps > 0): OFA's last shrinking phase
  # (expand 3/4/6, 4 subnets per step, lr 7.5e-3 per 64 images) scaled to batch 256, sandwich.
  c.train.update(dict(steps=0, batch_size=256, lr=0.03, warmup_steps=0, weight_decay=3e-5,
                      checkpoint_every=1000, log_every=50, progress_every=200,
                      resolutions=(160, 176, 192, 208, 224), calib_images=2000,
                      calib_batch_size=200))
  c.train.augment.update(dict(pad=16, flip=True))
  c.score = score_defaults()
  c.runtime = runtime_defaults()
  c.score.update(dict(block_size=8, chunk_size=1, batch_size=250))
  c.search = search_defaults()  # OFA's evolution settings
  c.search.update(dict(budgets=(150, 300), budget_unit="mmacs", reward="R2",
                       reference_reward="R0", inclusion=True, compare=False))
  if arg == "smoke":
    c.name = "imagenet_ofa_mbv3_smoke"
    c.space.update(dict(width_mult=0.35, num_classes=10, resolutions=(40,)))
    c.supernet.init_from = os.path.join(FIXTURES, "ofa_mbv3_tiny.pth")
    c.data.update(dict(tfds_name="imagenette", image_size=40, val_size=16))
    c.train.update(dict(batch_size=8, resolutions=(), calib_images=16, calib_batch_size=8,
                        checkpoint_every=1, log_every=1, progress_every=1))
    c.score.update(dict(block_size=2, chunk_size=1, batch_size=16, max_images=16))
    # The tiny supernet spans 1.1..5.3 MMACs at 40 px: budgets as fractions of the largest.
    c.search.update(dict(budgets=(0.4, 0.8), budget_unit="fraction", population_size=4,
                         generations=1))
  elif arg:
    raise ValueError(f"imagenet_ofa_mbv3: unknown variant {arg!r} (known: smoke)")
  return c
