"""TuNAS on CIFAR-10 from the packed JPEG file: one config per TuNAS space, sized for a GPU.

  regnas-search --config cifar10_tunas --config.data.path=/data/cifar10_jpeg.npz
  regnas-search --config cifar10_tunas:enlarged --config.data.path=...
  regnas-search --config cifar10_tunas:v3 --config.data.path=...
  regnas-search --config cifar10_tunas:latency --config.data.path=...
  regnas-search --config cifar10_tunas:smoke --config.data.path=...  # CPU

Full width on the small-image stem at 32 px.  10,000 alternating steps (~57 epochs of the 45,000
training images at batch 256; TuNAS searched 90 ImageNet epochs), the absolute reward with
TuNAS's beta = -0.1 at half the largest subnet's MACs, then the argmax architecture and 4
random architectures within +-2% of the target are each trained from scratch for 8,000 steps
(the comparison of docs/results.md).  RL learning rate: TuNAS's 0.0003 per 256 images is
scaled up 4x for the ~3x shorter search.
"""

import ml_collections

from regnas_jax.defaults import (apply_smoke, data_defaults, runtime_defaults, score_defaults,
                                 supernet_defaults, train_defaults, tunas_defaults, tunas_variants)
from regnas_jax.defaults import input_defaults, mesh_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens, space = tunas_variants(arg, "cifar10_tunas")
  c = ml_collections.ConfigDict()
  c.name = f"cifar10_tunas_{space}" + ("_latency" if "latency" in tokens else "")
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name=space, width_mult=1.0, stem="small", num_classes=10, resolutions=(32,)))
  c.supernet = supernet_defaults(depthwise_impl="auto", dtype="float32",
                                 dropout_rate=0.0)
  c.data = data_defaults("cifar10")
  c.input = input_defaults()
  c.train = train_defaults("cifar10")
  c.train.update(dict(method="tunas", steps=10000, batch_size=256, lr=0.1, warmup_steps=250,
                      weight_decay=4e-5, kd_ratio=0.0, checkpoint_every=1000, log_every=50,
                      progress_every=200))
  c.score = score_defaults("cifar10")
  c.runtime = runtime_defaults()
  c.score.block_size = 8
  c.search = tunas_defaults()
  c.search.update(dict(rl_learning_rate=0.0012, beta=-0.1, target=0.5, val_batch_size=1024,
                       random_samples=4, random_window=0.02, retrain_steps=8000))
  if "latency" in tokens:
    c.search.update(dict(cost="latency", target_unit="fraction", latency_samples=60,
                         latency_repeats=20, latency_batch_size=256))
  if "smoke" in tokens:
    c.name += "_smoke"
    apply_smoke(c, "cifar10")
    c.search.update(dict(val_batch_size=32, random_samples=1, random_window=0.05,
                         retrain_steps=2, latency_samples=4, latency_repeats=1,
                         latency_batch_size=4))
  return c
