"""TuNAS on scikit-learn's digits: weights and policy trained in alternation, absolute reward.

  regnas-search --config digits_tunas           # ProxylessNAS space
  regnas-search --config digits_tunas:enlarged  # ProxylessNAS-Enlarged
  regnas-search --config digits_tunas:v3        # MobileNetV3-Like
  regnas-search --config digits_tunas:latency   # cost = measured latency
  regnas-search --config digits_tunas:smoke     # seconds-scale plumbing

Variants combine with commas (``:v3,smoke``).  A quarter-width supernet on the small-image stem
at the digits' native 8x8 pixels so that the search fits a 2-core CPU in a few minutes.  The
search is shorter than TuNAS's by orders of magnitude, so the policy learns faster (RL learning
rate 0.05 instead of 0.0048) and the cost penalty is stronger (beta -0.5 instead of -0.1);
the target is half the largest subnet's MACs.
"""

import ml_collections

from regnas_jax.defaults import (apply_smoke, data_defaults, runtime_defaults, score_defaults,
                                 supernet_defaults, train_defaults, tunas_defaults, tunas_variants)
from regnas_jax.defaults import input_defaults, mesh_defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  v, space = tunas_variants(arg, "digits_tunas")
  c = ml_collections.ConfigDict()
  c.name = f"digits_tunas_{space}" + ("_latency" if "latency" in v else "")
  c.seed = 0
  c.mesh = mesh_defaults()
  c.space = ml_collections.ConfigDict(dict(
      name=space, width_mult=0.25, stem="small", num_classes=10, resolutions=(8,)))
  c.supernet = supernet_defaults(depthwise_impl="auto", dtype="float32",
                                 dropout_rate=0.0)
  c.data = data_defaults("digits")
  c.input = input_defaults()
  c.train = train_defaults("digits")   # the shared weights' optimiser; steps = search steps
  c.train.update(dict(method="tunas", steps=600, batch_size=64, lr=0.05, warmup_steps=20,
                      checkpoint_every=100, progress_every=50, log_every=5, kd_ratio=0.0))
  c.score = score_defaults("digits")
  c.runtime = runtime_defaults()
  c.search = tunas_defaults()
  c.search.update(dict(rl_learning_rate=0.05, beta=-0.5, target=0.5, val_batch_size=128,
                       random_samples=4))
  if "latency" in v:
    c.search.update(dict(cost="latency", target_unit="fraction", latency_samples=24,
                         latency_repeats=5, latency_batch_size=64))
  if "smoke" in v:
    c.name += "_smoke"
    apply_smoke(c, "digits")
    c.train.update(dict(steps=8, checkpoint_every=4, progress_every=4))
    c.search.update(dict(val_batch_size=64, random_samples=2))
    if "latency" in v:
      c.search.update(dict(latency_samples=6, latency_repeats=2, latency_batch_size=8))
  return c
