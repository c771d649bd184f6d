"""SCARLET-NAS S1 / S2 on CIFAR-10 from the packed JPEG file: supernet with ELS, then NSGA-II.

  regnas-search --config cifar10_scarlet --config.data.path=/data/cifar10_jpeg.npz
  regnas-search --config cifar10_scarlet:no_els --config.data.path=...
  regnas-search --config cifar10_scarlet:s2 --config.data.path=...
  regnas-search --config cifar10_scarlet:smoke --config.data.path=...  # CPU

Variants combine with commas (``:s2,no_els``).  Full width on the small-image stem at 32 px,
sized for an accelerator: FairNAS-style strict fairness (7 subnets per step for S1, 13 for S2,
every choice of every layer trained once per step), ~60 epochs of the 45,000 training images,
then SCARLET's NSGA-II with Table 1's settings (population 70) on Top-1 and MACs, MACs capped at
80% of the largest subnet, K = 4 models.  ``:no_els`` trains the same supernet with plain skips,
the comparison of SCARLET's Fig. 2 (see docs/results.md).
"""

import ml_collections

from regnas_jax.defaults import (apply_smoke, data_defaults, nsga2_defaults, runtime_defaults,
                                 scarlet_variants, score_defaults, supernet_defaults,
                                 train_defaults)
from regnas_jax.defaults import input_defaults, mesh_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tokens = scarlet_variants(arg, "cifar10_scarlet")
  s = "s2" if "s2" in tokens else "s1"
  c = ml_collections.ConfigDict()
  c.name = f"cifar10_scarlet_{s}" + ("_no_els" if "no_els" in tokens else "")
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name=f"scarlet_{s}", width_mult=1.0, stem="small", num_classes=10, resolutions=(32,),
      els="no_els" not in tokens, expand_choices=(3, 6), kernel_choices=(3, 5, 7)))
  c.supernet = supernet_defaults(
      depthwise_impl="auto", kernel_transform=True, dtype="float32", dropout_rate=0.0)
  c.data = data_defaults("cifar10")
  c.input = input_defaults()
  c.train = train_defaults("cifar10")
  c.train.update(dict(method="fair", num_subnets=7 if s == "s1" else 13, steps=10000,
                      batch_size=256, lr=0.05, warmup_steps=300, weight_decay=4e-5,
                      kd_ratio=0.0, checkpoint_every=1000, log_every=50, progress_every=200))
  c.score = score_defaults("cifar10")
  c.runtime = runtime_defaults()
  c.search = nsga2_defaults()
  c.search.update(dict(generations=30, max_macs=0.8, num_models=4))
  if "smoke" in tokens:
    c.name += "_smoke"
    apply_smoke(c, "cifar10")
    c.train.num_subnets = 2
    c.search.update(dict(population_size=6, generations=1, num_models=2, proposal_batch=32))
  return c
