"""OFA-ResNet50 on scikit-learn's digits: a family of four searched offline on a CPU.

  regnas-search --config digits_resnet50
  regnas-search --config digits_resnet50:smoke

The full OFA-ResNet50 layout (stem with its skippable middle layer, 4-4-6-4 bottlenecks with
ResNet-D shortcuts, elastic depth, expand ratio and six widths) at a quarter of ResNet50's widths
(stages 64..512 channels), on the small-image stem at the digits' native 8x8 pixels.  The family
has four members, like REG-NAS's ResNet50 table (budgets 2000/3000/4000 MMACs on ImageNet): here
25%, 45%, 65% and 90% of the largest subnet's MACs.
"""

import ml_collections

from regnas_jax.defaults import (apply_smoke, data_defaults, runtime_defaults, score_defaults,
                                 search_defaults, supernet_defaults, train_defaults)
from regnas_jax.defaults import input_defaults, mesh_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "digits_resnet50"
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name="ofa_resnet50", width_mult=0.25, stem="small", num_classes=10, resolutions=(8,),
      base_depths=(2, 2, 4, 2), depth_choices=(0, 1, 2), expand_choices=(0.2, 0.25, 0.35),
      width_choices=(0.65, 0.8, 1.0)))
  c.supernet = supernet_defaults(dtype="float32", dropout_rate=0.0)
  c.data = data_defaults("digits")
  c.input = input_defaults()
  c.train = train_defaults("digits")
  c.train.update(dict(steps=128, batch_size=32, lr=0.02, warmup_steps=10, checkpoint_every=32,
                      progress_every=20))
  c.score = score_defaults("digits")
  c.runtime = runtime_defaults()
  c.search = search_defaults()
  c.search.update(dict(budgets=(0.25, 0.45, 0.65, 0.9), budget_unit="fraction",
                       population_size=10, generations=3))
  if arg == "smoke":
    c.name = "digits_resnet50_smoke"
    c.space.update(dict(width_mult=0.125, base_depths=(1, 1, 1, 1), depth_choices=(0, 1)))
    apply_smoke(c, "digits")
    c.train.update(dict(steps=8, num_subnets=3, warmup_steps=2, checkpoint_every=4,
                        progress_every=4))
    c.search.update(dict(population_size=4, generations=1))
  elif arg:
    raise ValueError(f"digits_resnet50: unknown variant {arg!r} (known: smoke)")
  return c
