"""TuNAS on ImageNet in the ProxylessNAS space, with TuNAS's own search settings.

  regnas-search --config imagenet_tunas                 # accelerators; ImageNet prepared for tfds
  python -m regnas_jax.data.synthetic /tmp/tiny_imagenet   # a small generated image folder
  regnas-search --config imagenet_tunas:smoke --config.data.path=/tmp/tiny_imagenet   # CPU

TuNAS (Bender et al., "Can weight sharing outperform random architecture search?", CVPR 2020)
searched the ProxylessNAS space at 224 px for 90 epochs.  The values below are those of TuNAS's
released search code (``tunas/mobile_architecture_search.py``; facts collected in the project's
notes on TuNAS), which scales learning rates by batch / 256:

* data: ImageNet's training set split as TuNAS's is, 1,231,121 images for the weights and 50,046
  held out as the validation split that gives the reward's quality Q (``data.val_size``; TuNAS
  holds out the first 50,046, here they are drawn with ``data.split_seed``); the test split is
  ImageNet's validation set.
* 90 epochs at batch 4,096: 90 * 1,231,121 / 4,096 = 27,050 steps.
* shared weights: peak learning rate 0.165 per 256 images = 2.64 at batch 4,096, cosine decay
  after a linear warmup over 2.5% of the steps (676); weight decay 4e-5 (TuNAS's L2 loss of
  wd / 2 has this gradient), label smoothing 0.1, batch statistics throughout (stateless BN).
* policy: Adam with beta1 = 0, learning rate 0.0003 per 256 = 0.0048, zero for the first 25% of
  the steps, then growing exponentially to 10x at the end; reward baseline: moving average with
  momentum 0.95; no entropy bonus; filter and op warmup over the first 25%.
* reward: TuNAS's absolute reward Q + beta |T / T0 - 1| with beta = -0.1.
* cost T: TuNAS's own linear latency model of the ProxylessNAS space (estimated Pixel-1
  milliseconds; ``search.cost='tunas'``, ``regnas_jax/latency_tunas.py``, its kernel and bias
  shipped from TuNAS's released ``tunas/cost_model_data.py``), target T0 = 84 ms, TuNAS's
  default (the simulated latency of ProxylessNAS-Mobile; the model gives ProxylessNAS-Mobile
  84.4 ms).  The random-search baseline keeps architectures within +-1.2% of T0, as TuNAS's
  kept 83..85 ms around 84 ms.
* Q: top-1 on one validation batch of 4 x the training batch (16,384 images).

Where this differs from TuNAS:

* Optimiser of the shared weights: TuNAS used RMSProp (decay 0.9, momentum 0.9, epsilon 1.0,
  epsilon inside the square root).  The project's ``'rmsprop'`` fixes epsilon at 1e-3, which at
  TuNAS's learning rate would take steps up to ~30x larger than TuNAS's.  With epsilon 1.0 the
  denominator sqrt(mean square + 1) stays close to 1 for gradients well below 1, so TuNAS's
  update is close to heavy-ball momentum at the same learning rate: SGD with momentum 0.9,
  without Nesterov, at 2.64 is the closest supported optimiser.
* Augmentation: the TuNAS job reads padded random crops + flips (``input.augment='pad_crop'``),
  not TuNAS's Inception crops.
* As TuNAS: learning rates per 256 images (``search.scale_lr_by_batch``: 0.165 and 0.0003,
  i.e. 2.64 and 0.0048 at batch 4,096), an RL batch of 4 x the training batch
  (``search.rl_batch_size_multiplier``) and one sampled architecture per device of the mesh
  (``search.shards=0``; TuNAS: one per TPU core), each on its slice of both batches.

``search.retrain_steps=27050`` also trains the argmax and the random architectures from scratch
with the same optimiser for 90 epochs, as TuNAS's stand-alone training did (expensive).

``:smoke`` runs the same job on a CPU without ImageNet, on a small image folder of 10 classes
named by ``--config.data.path`` (``python -m regnas_jax.data.synthetic DIR`` generates one): a
quarter-width ProxylessNAS supernet on 32 px images, 4 search steps, the target at half the
largest subnet's estimated latency (TuNAS's model reads only the choices, so it estimates the
ImageNet-size network with the same choices).
"""

import ml_collections

from regnas_jax.defaults import (input_defaults, mesh_defaults, runtime_defaults, score_defaults,
                                 supernet_defaults, train_defaults, tunas_defaults)

# TuNAS's search, from its released code (module docstring).
BATCH = 4096
STEPS = 27050              # 90 epochs of 1,231,121 images at batch 4,096
VAL_IMAGES = 50046         # TuNAS's validation split: 50,046 of ImageNet's training images
TARGET_MS = 84.0           # TuNAS's latency target for the ProxylessNAS space (Pixel 1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "imagenet_tunas"
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name="proxylessnas", width_mult=1.0, stem="imagenet", num_classes=1000, resolutions=(224,)))
  c.supernet = supernet_defaults(depthwise_impl="auto", dtype="float32", dropout_rate=0.0)
  c.data = ml_collections.ConfigDict(dict(
      name="tfds", path="", tfds_name="imagenet2012", tfds_dir="", image_size=224,
      val_size=VAL_IMAGES, split_seed=0, cache_dir="", download=False))
  c.input = input_defaults()
  c.train = train_defaults()   # the shared weights' optimiser; steps = search steps
  # lr per 256 images (search.scale_lr_by_batch): 2.64 at batch 4,096.
  c.train.update(dict(method="tunas", steps=STEPS, batch_size=BATCH, optimizer="sgd", lr=0.165,
                      momentum=0.9, nesterov=False, warmup_steps=round(0.025 * STEPS),
                      weight_decay=4e-5, label_smoothing=0.1, kd_ratio=0.0,
                      checkpoint_every=1000, log_every=50, progress_every=200))
  c.train.augment.update(dict(pad=16, flip=True))
  c.score = score_defaults()
  c.score.update(dict(block_size=8, chunk_size=1, batch_size=250))
  c.runtime = runtime_defaults()
  c.search = tunas_defaults()
  # RL learning rate per 256 images (0.0048 at 4,096), RL batch 4 x the training batch, one
  # architecture per device.
  c.search.update(dict(
      reward="abs", beta=-0.1, cost="tunas", target=TARGET_MS,
      target_unit="ms", rl_learning_rate=0.0003, scale_lr_by_batch=True,
      rl_batch_size_multiplier=4, shards=0, rl_delay_fraction=0.25, rl_increase=10.0,
      baseline_momentum=0.95, entropy_weight=0.0, warmup_fraction=0.25, filter_warmup=True,
      op_warmup=True, random_samples=4, random_window=0.012,
      retrain_steps=0))
  if arg == "smoke":
    c.name = "imagenet_tunas_smoke"
    c.space.update(dict(width_mult=0.25, num_classes=10, resolutions=(32,)))
    # A small image folder named by --config.data.path (python -m regnas_jax.data.synthetic DIR
    # writes one): no ImageNet, no tfds.  (--config.data.name=tfds reads imagenette instead.)
    c.data.update(dict(name="folder", tfds_name="imagenette", image_size=32, val_size=16))
    c.train.update(dict(steps=4, batch_size=8, lr=0.1 * 256 / 8, warmup_steps=1,
                        checkpoint_every=2, log_every=1, progress_every=1, calib_images=16,
                        calib_batch_size=8))
    c.train.augment.pad = 2
    c.score.update(dict(block_size=2, chunk_size=1, batch_size=16, max_images=16))
    c.search.update(dict(target=0.5, target_unit="fraction", rl_batch_size_multiplier=2,
                         random_samples=1, random_window=0.2))
  elif arg:
    raise ValueError(f"imagenet_tunas: unknown variant {arg!r} (known: smoke)")
  return c
