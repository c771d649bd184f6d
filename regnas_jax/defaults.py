"""Config sections shared by the files in ``configs/`` (light: no JAX import).

A config builds its sections from these and overrides what differs:

  c.data = data_defaults("digits")       # the dataset's data section
  c.train = train_defaults("digits")     # shared training settings + the dataset's (augmentation, ...)
  c.score = score_defaults("digits")     # how subnets are scored on that dataset
  c.input = input_defaults()             # the host input pipeline (not part of the data identity)
  c.search = search_defaults()           # or nsga2_defaults() / tunas_defaults()
  c.runtime = runtime_defaults()         # how the process runs (caches, logs, traces): no result
  if smoke: apply_smoke(c, "digits")     # the dataset's seconds-scale settings

The per-dataset values live in :data:`DATASETS`, so every config on a dataset reads the same data,
augmentation, scoring and smoke settings from one place.
"""

import ml_collections

# Per dataset: the data section's values, and the train / score / smoke-variant settings that every
# config on that dataset shares.
DATASETS = {
    # scikit-learn's 8x8 digits, offline: 1,797 images, sized for a 2-core CPU.
    "digits": dict(
        data=dict(image_size=8, val_size=0),
        train=dict(calib_images=200),        # BN re-calibration set per scored subnet (OFA: 2,000)
        augment=dict(pad=0),                 # padded crops on 8 px images learn markedly slower
        # Blocks of 4: a generation's few new subnets pad fewer members (the scores do not
        # depend on the block: with chunk_size 1 each member runs the same program body).
        score=dict(batch_size=128, block_size=4),
        smoke=dict(train=dict(log_every=2, calib_images=128, calib_batch_size=64))),
    # CIFAR-10 from the packed JPEG file; 5,000 training images form the validation split.
    "cifar10": dict(
        data=dict(image_size=32, val_size=5000),
        train=dict(),
        augment=dict(pad=4, flip=True),
        score=dict(block_size=16, chunk_size=None),   # accelerators: vmap a block at once
        smoke=dict(data=dict(val_size=500),
                   train=dict(steps=4, batch_size=16, warmup_steps=1, checkpoint_every=2,
                              log_every=1, progress_every=1, calib_images=64,
                              calib_batch_size=32),
                   score=dict(block_size=2, chunk_size=1, max_images=256))),
}


def _dataset(name: str) -> dict:
  if name not in DATASETS:
    raise ValueError(f"no shared config sections for dataset {name!r} (known: "
                     f"{', '.join(DATASETS)})")
  return DATASETS[name]


def data_defaults(dataset: str) -> ml_collections.ConfigDict:
  """The data section of a config on ``dataset`` ('digits' | 'cifar10').

  ``name``: 'digits' | 'cifar10' / 'cifar100' (at ``path``: the archive as distributed, binary
  or python version, its folder, or a packed ``.npz``) | 'folder' (``path``: DIR with
  ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``) | 'npz' (a packed file of any dataset) |
  'tfds' (``tfds_name``, ``tfds_dir``; ``download``: let tfds download and prepare it, off by
  default); ``image_size``: the side images are stored at where they vary (folder, tfds; 0: the
  space's largest resolution); ``val_size`` training images form the holdout-validation split
  (0: 5,000; digits has its own fixed split); ``cache_dir`` keeps decoded images for later
  runs.  ``cache_dir`` and ``download`` do not change the data, so they are no part of a run's
  identity.
  """
  d = _dataset(dataset)["data"]
  return ml_collections.ConfigDict(dict(
      name=dataset, path="", tfds_name="", tfds_dir="", image_size=d["image_size"],
      val_size=d["val_size"], split_seed=0, cache_dir="", download=False))


def input_defaults() -> ml_collections.ConfigDict:
  """The host input pipeline of training (``regnas_jax/data/pipeline.py``).

  ``pipeline``: 'auto' (grain when ``workers``, ``decode`` or ``augment`` ask for it, else the
  in-memory path) | 'memory' | 'grain'; ``workers``: grain worker processes decoding and
  augmenting (0: a thread in this process); ``prefetch``: batches kept ready; ``decode``: 'once'
  (the packed-JPEG file decoded whole into memory) | 'on_demand' (per read, in the workers);
  ``augment``: 'pad_crop' (padded random crop + flip on the device, ``config.train.augment``) |
  'inception' (host-side random-resized crop + flip at the step's resolution, OFA's and TuNAS's
  ImageNet augmentation).  Only ``augment`` changes the trained weights, so only it enters a
  checkpoint's identity.
  """
  return ml_collections.ConfigDict(dict(pipeline="auto", workers=0, prefetch=2, decode="once",
                                        augment="pad_crop"))


def supernet_defaults(**options) -> ml_collections.ConfigDict:
  """The supernet section: the supernet's options (its dataclass fields: ``dtype``,
  ``dropout_rate``, ``depthwise_impl``, ...) and ``init_from``, a path to weights to start from
  instead of a fresh initialisation (an OFA checkpoint or a converted directory: see
  ``python -m regnas_jax.convert``)."""
  return ml_collections.ConfigDict(dict(options, init_from=""))


def apply_smoke(c: ml_collections.ConfigDict, dataset: str) -> None:
  """Shrink ``c`` in place to the seconds-scale settings that every ``:smoke`` variant on
  ``dataset`` shares (the config then sets its own steps, subnets and search size)."""
  for section, values in _dataset(dataset)["smoke"].items():
    c[section].update(values)


def train_defaults(dataset: str | None = None) -> ml_collections.ConfigDict:
  """Training settings shared by the configs, with ``dataset``'s augmentation and re-calibration
  settings when given (each config overrides what differs)."""
  c = ml_collections.ConfigDict(dict(
      method="sandwich",        # 'sandwich' | 'uniform' | 'fair' (FairNAS) | 'progressive' (OFA)
      steps=300,
      batch_size=64,
      num_subnets=4,            # sandwich: max + min + (n - 2) random; uniform: n random; fair:
                                # n archs, every choice equally often per decision (FairNAS)
      subnet_loop="auto",       # 'vmap' | 'scan' (sequential in one step) | 'auto' (see train)
      switch=False,             # True: with the 'scan' subnet loop, a supernet with switches
                                # runs each member's blocks by lax.switch on its choices (the
                                # same gradients; ~1.2x the exact-shape step on CPU against
                                # ~1.5x masked, its program compiles ~3x as long)
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
      max_nonfinite_steps=0,    # steps with a non-finite loss tolerated before training stops
      # BN re-calibration before scoring (OFA: 2,000 training images in batches of 200).
      calib_images=2000, calib_batch_size=200,
  ))
  if dataset is not None:
    c.update(_dataset(dataset)["train"])
    c.augment.update(_dataset(dataset)["augment"])
  return c


def score_defaults(dataset: str | None = None) -> ml_collections.ConfigDict:
  """How subnets are scored: per-member BN re-calibration, then eval-mode predictions; with
  ``dataset``'s batch and block sizes when given."""
  c = ml_collections.ConfigDict(dict(
      block_size=8,     # members per compiled call (populations are padded to a multiple)
      chunk_size=1,     # members at a time inside a call (lax.map); None: vmap the whole block
      batch_size=500,   # evaluation images per call (the last batch padded)
      max_images=0,     # >0: score a fixed random subset of each split (smoke runs)
      switch=False,     # True: with chunk_size 1 on one device, a supernet with switches runs
                        # each member's blocks by lax.switch on its choices -- only the chosen
                        # branch, at exact shapes (same scores).  Pays where scoring is long
                        # (2.4x faster per member, ~2.5x the compile time: docs/benchmarks.md)
  ))
  if dataset is not None:
    c.update(_dataset(dataset)["score"])
  return c


def runtime_defaults() -> ml_collections.ConfigDict:
  """How a run uses its machine: none of these change a result, so no saved state's identity
  reads this section (a run may resume with other values; regnas_jax/runtime.py)."""
  return ml_collections.ConfigDict(dict(
      compilation_cache_dir="auto",     # XLA's persistent compilation cache: 'auto' (on, in
                                        # $REGNAS_JAX_CACHE_DIR or ~/.cache/regnas-jax/xla), a
                                        # path (gs:// works) or 'off' (regnas_jax/runtime.py)
      compilation_cache_min_compile_s=0.0,  # cache programs that took at least this to compile
                                        # (0: all; JAX's 1 s would leave ~230 small ones of a
                                        # digits run to compile again, ~5 s on 2 cores)
      xla_flags="",                     # XLA flags added to XLA_FLAGS before JAX starts its backend
      tensorboard=False,                # also write metrics as TensorBoard events (workdir/tensorboard)
      profile_steps=(),                 # (start, stop): jax.profiler trace of steps start..stop-1
  ))


def mesh_defaults() -> ml_collections.ConfigDict:
  """Devices of a run (regnas_jax/parallel.py): ``devices`` 0 = all, n = the first n;
  ``params`` 'replicate' | 'fsdp' (split large arrays over the devices); ``coordinator``
  'host:port' of process 0 with ``num_processes``/``process_id`` (-1: from the environment) for a
  multi-host run through ``jax.distributed``.  Not part of any identity: a checkpoint resumes on
  another mesh."""
  return ml_collections.ConfigDict(dict(devices=0, params="replicate", fsdp_min_size=2 ** 16,
                                        coordinator="", num_processes=-1, process_id=-1))


def experiment_defaults() -> ml_collections.ConfigDict:
  """REG-NAS's tables on one supernet (``python -m regnas_jax.experiments.regnas_tables``)."""
  return ml_collections.ConfigDict(dict(
      seeds=(0, 1, 2),            # search seeds: every variant is searched once per seed
      reference_seed=0,           # A1 (R0, smallest budget) is searched once, with this seed
      baseline_seed=0,            # whose R0 family's A1 / A2 are trained separately from scratch
      sweep=(0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0),   # lambda2/lambda1 for A2
      independent_steps=0,        # steps of each from-scratch model (0: config.train.steps)
      # Focal distillation (Positive-Congruent Training) for the PCT baseline; our reading in
      # regnas_jax/training/exact.py: CE + weight * mean((alpha + beta * 1[old right]) * D).
      # A2 is trained once per weight; the holdout split chooses one by the search reward.
      fd=ml_collections.ConfigDict(dict(weights=(0.1, 0.3, 1.0), alpha=1.0, beta=5.0,
                                        temperature=1.0, kind="kl")),
  ))


def search_defaults() -> ml_collections.ConfigDict:
  """REG-NAS family search settings; the evolution values are OFA's evolution-finder defaults."""
  return ml_collections.ConfigDict(dict(
      algorithm="evolution",      # 'evolution' | 'random' (same number of evaluations)
      reward="R2",                # members A2..: 'R0' (1,0) | 'R1' (0,1) | 'R2' (1,1) | 'l1,l2'
      reference="",               # A1: '' = searched with reference_reward; or a JSON arch file
      reference_reward="R0",
      inclusion=True,             # A(i+1) must contain A(i) (weight inclusion)
      inclusion_mode="repair",    # 'repair' (raise to contain A(i)) | 'resample'
      nfr_against="previous",     # NFR term of A(i+1): against A(i), or 'all' (mean over A1..A(i))
      budgets=(150, 300, 600),    # one per member, ascending
      budget_unit="mmacs",        # 'mmacs' (millions of MACs, OFA's "MFLOPs") | 'fraction' of max
      window=0.1,                 # feasible MACs: [(1 - window) * budget, budget]
      compare=False,              # also run R0, R2 and random search on the same supernet
      export_formats=(),          # also write each member as subnets/<name>.onnx / .stablehlo
      population_size=100, parent_ratio=0.25, mutation_ratio=0.5, mutate_prob=0.1,
      resolution_mutate_prob=0.5, generations=500,
      proposal_batch=256, max_proposals=100_000,
  ))


def nsga2_defaults() -> ml_collections.ConfigDict:
  """Multi-objective search settings (``algorithm='nsga2'``): SCARLET-NAS's Table 1 values."""
  return ml_collections.ConfigDict(dict(
      algorithm="nsga2",
      objectives=("top1", "macs"),  # any of 'top1' | 'macs' | 'params' | 'nfr' (vs. reference)
      weights=(1.0, 1.0),           # crowding-distance weight per objective
      reference="",                 # JSON arch file; needed by the 'nfr' objective
      max_macs=0.0,                 # cheap constraint, checked before scoring (0: none)
      budget_unit="fraction",       # max_macs in 'mmacs' or as a 'fraction' of the largest
      min_top1=0.0,                 # expensive constraint: minimum validation top-1 (fraction)
      num_models=4,                 # K models chosen equispaced along the final front
      population_size=70, generations=100, mutation_ratio=0.8, mutate_prob=0.1,
      # Hierarchical mutation (meanings in regnas_jax/search/nsga2.py): mutation type random /
      # reinforced / pruning, and where reinforced mutation learns from (front M / the rest).
      mutation="hierarchical", p_rm=0.2, p_re=0.65, p_pr=0.15, p_m=0.7, p_k_m=0.3,
      proposal_batch=256, max_proposals=100_000,
  ))


def tunas_defaults() -> ml_collections.ConfigDict:
  """TuNAS search settings (``algorithm='tunas'``); values from TuNAS's released code where they
  carry over (see regnas_jax/search/tunas.py), the step count lives in ``config.train.steps``."""
  return ml_collections.ConfigDict(dict(
      algorithm="tunas",
      reward="abs",               # 'abs' Q + beta |T/T0 - 1| | 'soft' Q (T/T0)^beta | 'hard'
      beta=-0.1,                  # cost exponent / penalty (TuNAS: -0.1)
      cost="macs",                # 'macs' (analytic) | 'tunas' (TuNAS's Pixel-1 latency model, ms)
                                  # | 'latency' (linear model fitted on this machine)
      target=0.5,                 # T0 in target_unit
      target_unit="fraction",     # 'fraction' of the largest subnet's cost | 'mmacs' | 'ms' (tunas,
                                  # latency)
      rl_learning_rate=0.0048,    # Adam (b1 = 0); TuNAS: 0.0003 per 256 images at batch 4096
      rl_delay_fraction=0.25,     # policy frozen for the first 25% (the baseline still learns)
      rl_increase=10.0,           # RL learning rate grows exponentially to 10x by the end
      baseline_momentum=0.95, entropy_weight=0.0,
      warmup_fraction=0.25,       # filter / op warmup probability 1 -> 0 over this share
      filter_warmup=True, op_warmup=True,
      val_batch_size=256,         # Q: accuracy on one validation batch per step
      rl_batch_size_multiplier=0,  # >0: the RL batch is this x train.batch_size (TuNAS: 4)
      shards=1,                   # archs sampled per step, one per slice of both batches
                                  # (TuNAS: one per core; 0 = one per device of the mesh)
      scale_lr_by_batch=False,    # True: train.lr and rl_learning_rate are per 256 images
                                  # and scaled by train.batch_size / 256 (TuNAS)
      random_samples=4,           # random-search baseline: archs inside the cost window
      random_window=0.05,         # the window: target * [1 - w, 1 + w]
      random_tries=200_000,       # uniform draws at most
      retrain_steps=0,            # >0: also train each final arch from scratch for this many steps
      latency_samples=40, latency_repeats=10, latency_batch_size=1,
  ))


TUNAS_VARIANTS = ("enlarged", "v3", "latency", "smoke")
TUNAS_SPACES = {"": "proxylessnas", "enlarged": "proxylessnas_enlarged", "v3": "mobilenet_v3_like"}


def variants(arg, config_name: str, known: tuple, exclusive: tuple[str, str] | None = None) -> set:
  """The comma-separated variants ``arg`` of a config, checked: each one of ``known``, and not
  both of ``exclusive``."""
  tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
  bad = sorted(tokens - set(known))
  if bad:
    raise ValueError(f"{config_name}: unknown variant {bad[0]!r} (known: {', '.join(known)})")
  if exclusive and set(exclusive) <= tokens:
    raise ValueError(f"{config_name}: choose one of the variants {exclusive[0]} and "
                     f"{exclusive[1]}")
  return tokens


def tunas_variants(arg, config_name: str) -> tuple[set, str]:
  """The comma-separated variants of a TuNAS config, checked, and the space they choose."""
  tokens = variants(arg, config_name, TUNAS_VARIANTS, ("enlarged", "v3"))
  return tokens, TUNAS_SPACES["enlarged" if "enlarged" in tokens else "v3" if "v3" in tokens
                              else ""]


SCARLET_VARIANTS = ("s1", "s2", "no_els", "smoke")


def scarlet_variants(arg, config_name: str) -> set:
  """The comma-separated variants of a SCARLET config (``'s2,no_els'``), checked."""
  return variants(arg, config_name, SCARLET_VARIANTS, ("s1", "s2"))
