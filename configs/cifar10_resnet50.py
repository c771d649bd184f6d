"""OFA-ResNet50 (full widths, small-image stem) on CIFAR-10 from the packed JPEG file.

  regnas-search --config cifar10_resnet50 --config.data.path=/data/cifar10_jpeg.npz
  regnas-search --config cifar10_resnet50:smoke --config.data.path=...  # CPU

The OFA-ResNet50 space at ResNet50's widths on the 32 px stem (no stride in the stem, no max-pool;
total stride 8), sized for an accelerator.  A family of four under 25%, 45%, 65% and 90% of the
largest subnet's MACs at 32 px (REG-NAS searches four ResNet50 members).  The data file and the
validation split are as in ``cifar10_mbv3.py``.
"""

import ml_collections

from regnas_jax.defaults import (apply_smoke, data_defaults, runtime_defaults, score_defaults,
                                 search_defaults, supernet_defaults, train_defaults)
from regnas_jax.defaults import input_defaults, mesh_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "cifar10_resnet50"
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name="ofa_resnet50", width_mult=1.0, stem="small", num_classes=10, resolutions=(24, 28, 32),
      base_depths=(2, 2, 4, 2), depth_choices=(0, 1, 2), expand_choices=(0.2, 0.25, 0.35),
      width_choices=(0.65, 0.8, 1.0)))
  c.supernet = supernet_defaults(dtype="float32", dropout_rate=0.1)
  c.data = data_defaults("cifar10")
  c.input = input_defaults()
  c.train = train_defaults("cifar10")
  c.train.update(dict(steps=16000, batch_size=256, lr=0.1, warmup_steps=500, weight_decay=3e-5,
                      checkpoint_every=1000, log_every=50, progress_every=200))
  c.score = score_defaults("cifar10")
  c.runtime = runtime_defaults()
  c.search = search_defaults()
  c.search.update(dict(budgets=(0.25, 0.45, 0.65, 0.9), budget_unit="fraction", generations=50))
  if arg == "smoke":
    c.name = "cifar10_resnet50_smoke"
    c.space.update(dict(resolutions=(32,), width_mult=0.125))
    apply_smoke(c, "cifar10")
    c.train.num_subnets = 3
    c.search.update(dict(population_size=4, generations=1))
  elif arg:
    raise ValueError(f"cifar10_resnet50: unknown variant {arg!r} (known: smoke)")
  return c
