"""REG-NAS's own setting in the OFA-ResNet50 space: OFA's released ImageNet supernet, searched.

  # once: OFA's supernet (see README, "OFA's pretrained supernets"), converted without torch
  python -m regnas_jax.convert ofa_resnet50 ofa_supernet_resnet50 runs/ofa_resnet50
  # Table 1: A1..A4 at 2000/3000/4000/5000 MMACs with R2 + inclusion, and R2, R0, random search
  python run_search.py --config configs/imagenet_ofa_resnet50.py \\
      --config.supernet.init_from=runs/ofa_resnet50 --config.search.compare=True

The supernet is OFA's ``ofa_resnet50`` (``OFAResNets``: depth 0/1/2 extra blocks, expand
0.2/0.25/0.35, widths 0.65/0.8/1.0; ResNet-D shortcuts), trained by OFA for 128-224 px.
``supernet.init_from`` (the converted directory or the downloaded file itself) gives its
weights; ``train.steps=0`` uses them as they are (a positive ``train.steps`` fine-tunes them).

The family: A1, the reference, searched for top-1 alone (R0) under 2000 MMACs (OFA's
"MFLOPs"), then A2, A3, A4 under 3000, 4000 and 5000 MMACs with the reward R2 (top-1 minus NFR
against the previous member) and weight inclusion (each contains the previous one).
``search.compare=True`` also searches A2..A4 with R2 alone, with R0 and by random search.
Evolution, scoring, data and splits as in ``imagenet_ofa_mbv3.py``: OFA's evolution settings,
BN re-calibrated on 2,000 training images, a fixed holdout of 10,000 ImageNet training images
for the search, ImageNet's validation set as the test split (tfds ``imagenet2012``).

``:smoke`` runs the same job on a CPU without ImageNet: on a small image folder of 10 classes
named by ``--config.data.path`` (``python -m regnas_jax.data.synthetic DIR`` generates one), from
the random-weight OFA checkpoint of the test fixtures (an eighth of ResNet50's widths, 10
classes, 40 px), with a population of 4 for one generation.
"""

import os

import ml_collections

from regnas_jax.defaults import runtime_defaults, score_defaults, search_defaults, train_defaults
from regnas_jax.defaults import input_defaults, mesh_defaults

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "fixtures")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "imagenet_ofa_resnet50"
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name="ofa_resnet50", width_mult=1.0, stem="imagenet", num_classes=1000,
      resolutions=(128, 144, 160, 176, 192, 208, 224), base_depths=(2, 2, 4, 2),
      depth_choices=(0, 1, 2), expand_choices=(0.2, 0.25, 0.35), width_choices=(0.65, 0.8, 1.0)))
  c.supernet = ml_collections.ConfigDict(dict(
      dtype="float32", dropout_rate=0.0,
      init_from=""))  # OFA's weights: a converted directory or OFA's checkpoint file
  c.data = ml_collections.ConfigDict(dict(
      name="tfds", path="", tfds_name="imagenet2012", tfds_dir="", image_size=224,
      val_size=10000, split_seed=0, cache_dir="", download=False))
  c.input = input_defaults()
  c.train = train_defaults()
  # steps=0: OFA's weights as they are; steps > 0 fine-tunes (sandwich rule, small rate).
  c.train.update(dict(steps=0, batch_size=256, lr=0.03, warmup_steps=0, weight_decay=3e-5,
                      checkpoint_every=1000, log_every=50, progress_every=200,
                      calib_images=2000, calib_batch_size=200))
  c.train.augment.update(dict(pad=16, flip=True))
  c.score = score_defaults()
  c.runtime = runtime_defaults()
  c.score.update(dict(block_size=8, chunk_size=1, batch_size=250))
  c.search = search_defaults()  # OFA's evolution settings
  c.search.update(dict(budgets=(2000, 3000, 4000, 5000), budget_unit="mmacs", reward="R2",
                       reference_reward="R0", inclusion=True, compare=False))
  if arg == "smoke":
    c.name = "imagenet_ofa_resnet50_smoke"
    c.space.update(dict(width_mult=0.125, num_classes=10, resolutions=(40,)))
    c.supernet.init_from = os.path.join(FIXTURES, "ofa_resnet50_tiny.pth")
    # A small image folder named by --config.data.path (python -m regnas_jax.data.synthetic DIR
    # writes one): no ImageNet, no tfds.  (--config.data.name=tfds reads imagenette instead.)
    c.data.update(dict(name="folder", tfds_name="imagenette", image_size=40, val_size=16))
    c.train.update(dict(batch_size=8, calib_images=16, calib_batch_size=8, checkpoint_every=1,
                        log_every=1, progress_every=1))
    c.score.update(dict(block_size=2, chunk_size=1, batch_size=16, max_images=16))
    # The tiny supernet spans 1.0..6.6 MMACs at 40 px: budgets as fractions of the largest.
    c.search.update(dict(budgets=(0.3, 0.5, 0.7, 0.9), budget_unit="fraction",
                         population_size=4, generations=1))
  elif arg:
    raise ValueError(f"imagenet_ofa_resnet50: unknown variant {arg!r} (known: smoke)")
  return c
