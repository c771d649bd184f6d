"""Default config sections shared by the files in ``configs/`` (light: no JAX import)."""

import ml_collections


def train_defaults() -> ml_collections.ConfigDict:
  """Training settings shared by the configs (each overrides what differs)."""
  return ml_collections.ConfigDict(dict(
      method="sandwich",        # 'sandwich' | 'uniform' | 'progressive' (OFA)
      steps=300,
      batch_size=64,
      num_subnets=4,            # sandwich: max + min + (n - 2) random; uniform: n random
      subnet_loop="auto",       # 'vmap' | 'scan' (sequential in one step) | 'auto' (scan on CPU)
      resolutions=(),           # training resolutions (empty: all of the space's)
      optimizer="sgd",          # 'sgd' (Nesterov) | 'rmsprop'
      lr=0.1, momentum=0.9, nesterov=True, warmup_steps=20,
      weight_decay=3e-5,        # not on BN parameters or biases (OFA)
      label_smoothing=0.1,
      grad_clip_norm=0.0,       # 0: no clipping
      kd_ratio=1.0,             # weight of the distillation loss (0: none)
      student_label_loss=True,  # students also learn from labels (OFA: True; AttentiveNAS: False)
      # Progressive shrinking (method='progressive'): shares of the steps, subnets per step
      # and learning-rate scale for the phase groups (full, kernel, depth, expand).
      ps_fractions=(0.25, 0.25, 0.25, 0.25), ps_subnets=(1, 1, 2, 4),
      ps_lr_scale=(1.0, 0.5, 0.25, 0.25),
      augment=ml_collections.ConfigDict(dict(pad=2, flip=False)),
      checkpoint_every=100, max_to_keep=2, log_every=10, progress_every=50,
      # BN re-calibration before scoring (OFA: 2,000 training images in batches of 200).
      calib_images=2000, calib_batch_size=200,
  ))
