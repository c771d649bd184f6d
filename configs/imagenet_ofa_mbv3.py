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

``:smoke`` runs the same job on a CPU without ImageNet: on a small image folder of 10 classes
named by ``--config.data.path`` (``python -m regnas_jax.data.synthetic DIR`` generates one; a
missing path is an error naming that command), from the random-weight OFA checkpoint of the test
fixtures (width 0.35, 10 classes, 40 px), with a population of 4 for one generation:

  python -m regnas_jax.data.synthetic /tmp/tiny_imagenet
  regnas-search --config imagenet_ofa_mbv3:smoke --config.data.path=/tmp/tiny_imagenet

``:train`` trains the supernet itself from scratch with OFA's progressive shrinking (Cai et al.,
"Once-for-All", ICLR 2020; OFA's ``train_ofa_net.py``), then searches it as above:

  regnas-search --config imagenet_ofa_mbv3:train --stop_after train   # the supernet only
  regnas-search --config imagenet_ofa_mbv3:train                      # then the family search

It is a variant of this file rather than a file of its own because the supernet it trains is the
one this config searches: space, data, scoring and search settings stay one.  The network is the
one OFA's paper trains, ``ofa_mbv3_d234_e346_k357_w1.0`` (width 1.0), at OFA's elastic
resolution: every multiple of 4 in 128..224 px, one drawn per step, in every phase.  Phases
(``train.method='progressive'``; OFA's values at its 32 GPUs x 64 images = batch 2,048; an
epoch is the 1,271,167 training images outside the holdout):

  phase          choices unlocked        epochs     lr      subnets/step
  full network   largest only            180        2.6     1
  kernel         kernel 3/5/7            120        0.96    1
  depth          + depth 3, then 2       25 + 120   0.08, 0.24   2
  expand         + expand 4, then 3      25 + 120   0.08, 0.24   4

590 epochs = 366,205 steps.  Every phase starts a fresh SGD-Nesterov optimiser (momentum 0.9)
with a cosine schedule; weight decay 3e-5 (not on BN or biases), label smoothing 0.1, dropout
0.1, Inception crops + flips; after the full-network phase every subnet is distilled from the
frozen full network (``kd_ratio=1``, plus the label loss), and each expand stage first re-orders
middle channels by importance.  The kernel, depth and expand values are those of OFA's released
``train_ofa_net.py``; the full network's 2.6 is OFA's (its issue #32), its 180 epochs are from
the paper (OFA did not release that script).  What the schedule keys cannot say exactly:

* one step count per phase group: the two depth (and the two expand) stages split their 145
  epochs evenly (72.5 + 72.5 instead of 25 + 120);
* one learning rate per group: both depth (and expand) stages use the longer stage's 0.24;
* one warmup for every phase: 5 epochs (OFA's; OFA's first depth and expand stages have none,
  the full-network phase's is not published).

``:train,smoke`` trains a width-0.35 supernet with two blocks per stage (depth 1 or 2, expand 4
or 6) from scratch on the same small image folder for 4 steps, one per phase of its schedule,
then searches it as ``:smoke`` does.
"""

import os

import ml_collections

from regnas_jax.defaults import runtime_defaults, score_defaults, search_defaults, train_defaults
from regnas_jax.defaults import input_defaults, mesh_defaults, variants

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "fixtures")
VARIANTS = ("train", "smoke")

# OFA's progressive shrinking (module docstring): 32 GPUs x 64 images, the 1,271,167 training
# images outside the 10,000-image holdout, epochs of the full-network, kernel, depth and expand
# phases.
BATCH = 2048
STEPS_PER_EPOCH = (1_281_167 - 10_000) / BATCH
PS_EPOCHS = (180, 120, 25 + 120, 25 + 120)


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
      val_size=10000, split_seed=0, cache_dir="", download=False))
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
  tokens = variants(arg, "imagenet_ofa_mbv3", VARIANTS)
  if "train" in tokens:
    progressive_shrinking(c)
  if "smoke" in tokens:
    c.name += "_smoke"
    c.space.update(dict(width_mult=0.35, num_classes=10, resolutions=(40,)))
    c.supernet.init_from = os.path.join(FIXTURES, "ofa_mbv3_tiny.pth")
    # A small image folder named by --config.data.path (python -m regnas_jax.data.synthetic DIR
    # writes one): no ImageNet, no tfds.  (--config.data.name=tfds reads imagenette instead.)
    c.data.update(dict(name="folder", tfds_name="imagenette", image_size=40, val_size=16))
    c.train.update(dict(batch_size=8, resolutions=(), calib_images=16, calib_batch_size=8,
                        checkpoint_every=1, log_every=1, progress_every=1))
    c.score.update(dict(block_size=2, chunk_size=1, batch_size=16, max_images=16))
    # The tiny supernet spans 1.1..5.3 MMACs at 40 px: budgets as fractions of the largest.
    c.search.update(dict(budgets=(0.4, 0.8), budget_unit="fraction", population_size=4,
                         generations=1))
    if "train" in tokens:
      # From scratch, two blocks per stage (depth 1 or 2) and expand 4 or 6, so that the
      # schedule has one stage per group and the steps compile in half the time: 4 steps, one per
      # phase (full, kernel, depth, expand with its channel re-ordering).
      c.space.update(dict(depth_choices=(1, 2), expand_choices=(4, 6)))
      c.supernet.init_from = ""
      c.input.workers = 0
      c.train.update(dict(steps=4, lr=0.05, warmup_steps=0))
  return c


def progressive_shrinking(c: ml_collections.ConfigDict) -> None:
  """The ``train`` variant: OFA's supernet trained from scratch by progressive shrinking."""
  c.name += "_train"
  c.space.update(dict(width_mult=1.0, resolutions=tuple(range(128, 225, 4))))
  c.supernet.init_from = ""
  c.input.update(dict(augment="inception", workers=8))
  c.train.update(dict(
      method="progressive", steps=round(sum(PS_EPOCHS) * STEPS_PER_EPOCH), batch_size=BATCH,
      optimizer="sgd", momentum=0.9, nesterov=True, lr=2.6,
      ps_fractions=PS_EPOCHS, ps_subnets=(1, 1, 2, 4),
      ps_lr_scale=(1.0, 0.96 / 2.6, 0.24 / 2.6, 0.24 / 2.6),
      warmup_steps=round(5 * STEPS_PER_EPOCH), weight_decay=3e-5, label_smoothing=0.1,
      kd_ratio=1.0, student_label_loss=True, resolutions=(), checkpoint_every=2000))
