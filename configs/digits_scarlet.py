"""SCARLET-NAS S1 / S2 on scikit-learn's digits: supernet with ELS, then constrained NSGA-II.

  regnas-search --config digits_scarlet         # S1 with ELS
  regnas-search --config digits_scarlet:s2      # S2 (SE choices)
  regnas-search --config digits_scarlet:no_els  # plain skips (comparison)
  regnas-search --config digits_scarlet:smoke   # seconds-scale plumbing test

Variants combine with commas (``:s2,no_els``, ``:s2,smoke``).  A quarter-width supernet on the
small-image stem at the digits' native 8x8 pixels, trained with FairNAS's strict fairness (every
choice of every layer trained once per step) so that training and the search fit a 2-core CPU
in a few minutes.  The search is SCARLET's NSGA-II with Table 1's mutation settings on a smaller
population; objectives validation Top-1 and MACs, MACs capped at 90% of the largest subnet.
"""

import ml_collections

from regnas_jax.defaults import (apply_smoke, data_defaults, nsga2_defaults, runtime_defaults,
                                 scarlet_variants, score_defaults, supernet_defaults,
                                 train_defaults)
from regnas_jax.defaults import input_defaults, mesh_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  v = scarlet_variants(arg, "digits_scarlet")
  s = "s2" if "s2" in v else "s1"
  c = ml_collections.ConfigDict()
  c.name = f"digits_scarlet_{s}" + ("_no_els" if "no_els" in v else "")
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name=f"scarlet_{s}", width_mult=0.25, stem="small", num_classes=10, resolutions=(8,),
      els="no_els" not in v, expand_choices=(3, 6), kernel_choices=(3, 5, 7)))
  c.supernet = supernet_defaults(
      depthwise_impl="auto", kernel_transform=True, dtype="float32", dropout_rate=0.0)
  c.data = data_defaults("digits")
  c.input = input_defaults()
  c.train = train_defaults("digits")
  c.train.update(dict(method="fair", num_subnets=7 if s == "s1" else 13, steps=192,
                      batch_size=32, lr=0.02, warmup_steps=8, checkpoint_every=32,
                      progress_every=16, kd_ratio=0.0))
  c.score = score_defaults("digits")
  c.runtime = runtime_defaults()
  c.search = nsga2_defaults()
  c.search.update(dict(population_size=20, generations=6, max_macs=0.9, num_models=4))
  if "smoke" in v:
    c.name += "_smoke"
    c.supernet.kernel_transform = False  # fewer ops to compile
    apply_smoke(c, "digits")
    c.train.update(dict(steps=6, num_subnets=3, warmup_steps=1, checkpoint_every=3,
                        progress_every=3))
    c.search.update(dict(population_size=6, generations=2, num_models=3, proposal_batch=32))
  return c
