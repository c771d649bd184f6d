"""OFA-MobileNetV3 on scikit-learn's digits: the offline default of run_search.py.

  python run_search.py                                   # this config
  python run_search.py --config configs/digits_mbv3.py:smoke --config.score.population=4

A narrower supernet (width 0.5) on the small-image stem at 12/16 px, so it fits a 2-core CPU.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "digits_mbv3"
  c.seed = 0
  c.space = ml_collections.ConfigDict(dict(
      name="ofa_mbv3", width_mult=0.5, stem="small", num_classes=10, resolutions=(12, 16),
      kernel_choices=(3, 5, 7), expand_choices=(3, 4, 6), depth_choices=(2, 3, 4)))
  c.supernet = ml_collections.ConfigDict(dict(
      depthwise_impl="auto", kernel_transform=True, dtype="float32"))
  c.data = ml_collections.ConfigDict(dict(name="digits", split_seed=0))
  # Scoring a sampled population (min, max and `population` random subnets) on the holdout
  # validation split.  bn='batch' normalises with batch statistics (an untrained supernet has
  # no useful running statistics yet).
  c.score = ml_collections.ConfigDict(dict(population=16, chunk_size=8, bn="batch"))
  if arg == "smoke":
    c.name = "digits_mbv3_smoke"
    c.space.width_mult = 0.25
    c.space.resolutions = (12,)
    c.score.population = 2
    c.score.chunk_size = 4
  elif arg:
    raise ValueError(f"digits_mbv3: unknown variant {arg!r} (known: smoke)")
  return c
