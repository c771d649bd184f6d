"""The main job behind ``run_search.py``: build a space and its supernet, train it (resuming
from the work directory), search a REG-NAS family of subnets on the holdout-validation split,
evaluate it on the test split and write results, tables, plots and the extracted subnets to the
work directory.  ``config.search.compare`` also runs the R0, R2 and random-search variants on
the same supernet and prints them side by side.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import checkpoint as ckpt_lib
from regnas_jax import data as data_lib
from regnas_jax import evaluate, export, pareto, report, search, spaces
from regnas_jax.search import family as family_lib
from regnas_jax import train as train_lib
from regnas_jax import nn as nets
from regnas_jax.nn.common import init_variables


class ConfigError(ValueError):
  """A configuration that cannot run; the message names the offending key."""


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_space(cfg) -> spaces.SearchSpace:
  sc = dict(cfg.space)
  name = sc.pop("name", None)
  try:
    return spaces.get_space(name, **{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in sc.items()})
  except spaces.InvalidSpaceError as e:
    raise ConfigError(f"config.space: {e}") from None


def build_supernet(cfg, space):
  opts = dict(cfg.supernet)
  opts.pop("init_from", None)  # where the weights come from, not a module option
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if opts.get("dtype") not in dtypes:
    raise ConfigError(f"config.supernet.dtype: {opts.get('dtype')!r} is not one of {tuple(dtypes)}")
  opts["dtype"] = dtypes[opts["dtype"]]
  if "depthwise_impl" in opts and opts["depthwise_impl"] not in nets.ops.DEPTHWISE_IMPLS:
    raise ConfigError(f"config.supernet.depthwise_impl: {opts.get('depthwise_impl')!r} is not one "
                      f"of {nets.ops.DEPTHWISE_IMPLS}")
  try:
    return nets.build_supernet(space, **opts)
  except TypeError as e:
    raise ConfigError(f"config.supernet: {e}") from None


DATASETS = ("digits", "cifar10", "tfds")


def load_dataset(cfg, space) -> data_lib.Dataset:
  """The dataset of ``cfg.data`` (errors name the config key)."""
  dc = cfg.data
  val = int(dc.val_size) if dc.val_size else 5000
  size = int(dc.image_size) if dc.image_size else max(space.resolutions)
  try:
    if dc.name == "digits":
      ds = data_lib.load_digits(size, seed=dc.split_seed)
    elif dc.name == "cifar10":
      if not dc.path:
        raise ConfigError("config.data.path: give the packed CIFAR-10 file "
                          "(--config.data.path=/path/to/cifar10_jpeg.npz)")
      ds = data_lib.load_cifar10_npz(dc.path, val_size=val, seed=dc.split_seed,
                                     cache_dir=dc.cache_dir or None)
    else:
      if not dc.tfds_name:
        raise ConfigError("config.data.tfds_name: name the tfds dataset (e.g. cifar10)")
      ds = data_lib.load_tfds(dc.tfds_name, dc.tfds_dir or None, size, val, dc.split_seed)
  except data_lib.DataError as e:
    raise ConfigError(str(e)) from None
  if ds.num_classes != space.num_classes:
    raise ConfigError(f"config.space.num_classes: {ds.name} has {ds.num_classes} classes, "
                      f"got {space.num_classes}")
  return ds


def _int(v, lo: int) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def check_config(cfg) -> None:
  """Raise :class:`ConfigError` naming the first bad value of the train/score/search sections."""
  if cfg.data.name not in DATASETS:
    raise ConfigError(f"config.data.name: {cfg.data.name!r} is not one of {DATASETS}")
  sc = cfg.score
  for key, lo in (("block_size", 1), ("batch_size", 1), ("max_images", 0)):
    if not _int(sc.get(key), lo):
      raise ConfigError(f"config.score.{key}: must be an integer >= {lo}, got {sc.get(key)!r}")
  if sc.chunk_size is not None and not _int(sc.chunk_size, 1):
    raise ConfigError(f"config.score.chunk_size: must be a positive integer, got {sc.chunk_size!r}")
  for key in ("batch_size", "checkpoint_every", "log_every", "progress_every", "calib_images",
              "calib_batch_size"):
    v = cfg.train[key]
    if not _int(v, 1):
      raise ConfigError(f"config.train.{key}: must be a positive integer, got {v!r}")
  se = cfg.search
  if se.algorithm in ("nsga2", "tunas"):
    return  # checked by pareto.check_config / tunas_job.check_config once the space is built
  if se.algorithm not in family_lib.ALGORITHMS:
    raise ConfigError(f"config.search.algorithm: {se.algorithm!r} is not one of "
                      f"{tuple(family_lib.ALGORITHMS) + ('nsga2', 'tunas')}")
  for key in ("reward", "reference_reward"):
    try:
      search.parse_reward(se[key])
    except ValueError as e:
      raise ConfigError(f"config.search.{key}: {e}") from None
  if se.inclusion_mode not in search.constraints.INCLUSION_MODES:
    raise ConfigError(f"config.search.inclusion_mode: {se.inclusion_mode!r} is not one of "
                      f"{search.constraints.INCLUSION_MODES}")
  if se.nfr_against not in family_lib.NFR_AGAINST:
    raise ConfigError(f"config.search.nfr_against: {se.nfr_against!r} is not one of "
                      f"{family_lib.NFR_AGAINST}")
  if se.budget_unit not in BUDGET_UNITS:
    raise ConfigError(f"config.search.budget_unit: {se.budget_unit!r} is not one of {BUDGET_UNITS}")
  b = tuple(se.budgets) if isinstance(se.budgets, (tuple, list)) else (se.budgets,)
  if not b or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in b) \
      or any(y <= x for x, y in zip(b, b[1:])):
    raise ConfigError(f"config.search.budgets: need positive budgets in ascending order, got {b}")
  if se.budget_unit == "fraction" and b[-1] > 1:
    raise ConfigError(f"config.search.budgets: fractions of the largest subnet's MACs must be "
                      f"<= 1, got {b[-1]}")
  if not (isinstance(se.window, (int, float)) and 0 < se.window <= 1):
    raise ConfigError(f"config.search.window: must be in (0, 1], got {se.window!r}")
  try:
    evolution_config(cfg).check()
  except ValueError as e:
    raise ConfigError(f"config.search.{e}") from None


BUDGET_UNITS = ("mmacs", "fraction")


def evolution_config(cfg) -> search.EvolutionConfig:
  se = cfg.search
  return search.EvolutionConfig(**{k: se[k] for k in search.EvolutionConfig._fields})


def supernet_fns(net):
  """(init_fn, reorder_fn) of a supernet module."""
  init_fn = lambda key: init_variables(net, key)
  return init_fn, lambda v, keep: nets.reorder_channels(net, v, keep)


class Scorer:
  """Scores subnets of a trained supernet on a split: each member's BN statistics re-calibrated
  on a fixed set of training images, then eval-mode predictions.

  Calibration batches and evaluation images are prepared once per resolution; populations are
  grouped by resolution and run in fixed-size member blocks, so every (resolution, split size)
  compiles once.
  """

  def __init__(self, cfg, net, space, variables, dataset, log=_log):
    self.cfg, self.net, self.space, self.dataset = cfg, net, space, dataset
    self.variables = _uncommitted(variables)  # as in warm_up: same jit cache entries
    self.log = log
    self._calib, self._images = {}, {}
    self.seconds = 0.0

  def calib(self, r: int) -> np.ndarray:
    if r not in self._calib:
      cfg, ds = self.cfg, self.dataset
      src = data_lib.SubsetSource(ds.train, np.random.default_rng([cfg.seed, 11]).permutation(
          len(ds.train))[:cfg.train.calib_images])
      x, _ = data_lib.eval_images(src, r, ds.mean, ds.std)
      self._calib[r] = jax.device_put(evaluate.calibration_batches(
          x, len(x), cfg.train.calib_batch_size, cfg.seed))  # on the device once
    return self._calib[r]

  def images(self, split: str, r: int):
    if (split, r) not in self._images:
      src = getattr(self.dataset, split)
      limit = int(self.cfg.score.max_images or 0)
      if 0 < limit < len(src):  # a fixed random subset (splits may be sorted by class)
        src = data_lib.SubsetSource(src, np.sort(np.random.default_rng(
            [self.cfg.seed, 13]).permutation(len(src))[:limit]))
      x, y = data_lib.eval_images(src, r, self.dataset.mean, self.dataset.std)
      self._images[split, r] = (jax.device_put(x), y)
    return self._images[split, r]

  def labels(self, split: str) -> np.ndarray:
    return self.images(split, self.space.resolutions[0])[1]

  def _groups(self, pop):
    res_idx = np.asarray(pop.resolution).reshape(-1)
    for r_i in np.unique(res_idx):
      members = np.flatnonzero(res_idx == r_i)
      yield self.space.resolutions[r_i], members, jax.tree.map(lambda x: np.asarray(x)[members], pop)

  def _kw(self):
    sc = self.cfg.score
    return dict(block_size=sc.block_size, chunk_size=sc.chunk_size)

  def stats(self, pop):
    """Per-member re-calibrated ``batch_stats`` (leading axis), numpy."""
    out = None
    for r, members, group in self._groups(pop):
      st = evaluate.recalibrate_population(self.net, self.variables, self.calib(r), group,
                                           **self._kw())
      if out is None:
        out = jax.tree.map(lambda s: np.zeros((len(pop.resolution),) + s.shape[1:], s.dtype), st)
      out = jax.tree.map(lambda o, s, m=members: _set(o, m, s), out, st)
    return out

  def correct(self, pop, split: str) -> np.ndarray:
    """Bool ``(P, N)``: per member, which samples of ``split`` it classifies correctly."""
    t = time.time()
    out = None
    for r, members, group in self._groups(pop):
      x, y = self.images(split, r)
      st = evaluate.recalibrate_population(self.net, self.variables, self.calib(r), group,
                                           **self._kw())
      pred = evaluate.population_predictions(self.net, self.variables["params"], st, group, x,
                                             batch_size=self.cfg.score.batch_size, **self._kw())
      if out is None:
        out = np.zeros((len(pop.resolution), len(y)), bool)
      out[members] = pred == y[None]
    self.seconds += time.time() - t
    return out


def warm_up(cfg, net, space, dataset) -> threading.Thread:
  """Compile the scoring and proposal programs in a background thread.

  Started before training, the compiles (tens of seconds on a CPU) overlap with the training
  step's own compile instead of following it.  The programs are run once on zeros of exactly the
  shapes used later, which fills jit's cache; failures are ignored (the same programs then
  compile on first use).
  """
  def work():
    try:
      r = max(space.resolutions)
      abstract = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, r, r, 3)),
                                space.max_arch())
      v = _uncommitted(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract))
      kw = dict(block_size=cfg.score.block_size, chunk_size=cfg.score.chunk_size)
      n = min(cfg.train.calib_images, len(dataset.train))
      b = min(cfg.train.calib_batch_size, n)
      limit = int(cfg.score.max_images or 0)
      sizes = {min(len(s), limit) if limit else len(s) for s in (dataset.val, dataset.test)}
      for r_i, r in enumerate(space.resolutions):
        pop = jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], cfg.score.block_size, 0),
                           space.min_arch())._replace(
                               resolution=np.full(cfg.score.block_size, r_i, np.int32))
        st = evaluate.recalibrate_population(
            net, v, jax.device_put(np.zeros((n // b, b, r, r, 3), np.float32)), pop, **kw)
        for size in sizes:
          evaluate.population_predictions(net, v["params"], st, pop,
                                          jax.device_put(np.zeros((size, r, r, 3), np.float32)),
                                          batch_size=cfg.score.batch_size, **kw)
      if cfg.search.algorithm == "nsga2":
        return  # NSGA-II proposes on the host (no proposal programs to warm)
      evo = evolution_config(cfg)
      sample, mutants, crossovers = search.evolution._proposers(
          space, evo.mutate_prob, evo.resolution_mutate_prob)
      key = jax.random.key(0, impl=search.evolution.PRNG_IMPL)
      par = sample(key, evo.num_parents)
      for fn in (mutants, crossovers):
        jax.block_until_ready(fn(key, evo.proposal_batch, jax.tree.map(np.asarray, par)))
      jax.block_until_ready(sample(key, evo.proposal_batch))
    except Exception as e:  # noqa: BLE001 - an optimisation only
      if os.environ.get("REGNAS_DEBUG"):
        raise
      del e

  t = threading.Thread(target=work, name="regnas-warm-up", daemon=True)
  t.start()
  return t


def _uncommitted(tree):
  """Arrays on the default device, not committed to it: jit's cache key includes whether an
  argument is committed, so warm-up and scoring must pass variables the same way."""
  return jax.device_put(jax.tree.map(np.asarray, tree))


def _set(o, idx, v):
  o[idx] = v
  return o


def budget_windows(cfg, space) -> list[tuple[float, float]]:
  """``[(macs_low, macs_high)]`` per member from ``config.search`` (MACs per image)."""
  se = cfg.search
  scale = 1e6 if se.budget_unit == "mmacs" else float(space.macs(space.max_arch()))
  out = []
  for b in se.budgets:
    hi = float(b) * scale
    out.append(((1.0 - float(se.window)) * hi, hi))
  return out


def member_specs(cfg, space, reward, inclusion: bool, algorithm: str):
  windows = budget_windows(cfg, space)
  ref_reward = search.parse_reward(cfg.search.reference_reward)
  return [family_lib.MemberSpec(f"A{i + 1}", lo, hi, ref_reward if i == 0 else reward,
                                False if i == 0 else inclusion, algorithm)
          for i, (lo, hi) in enumerate(windows)]


def load_reference(cfg, space):
  path = cfg.search.reference
  if not path:
    return None
  try:
    with open(path) as f:
      obj = json.load(f)
  except OSError as e:
    raise ConfigError(f"config.search.reference: cannot read {path}: {e.strerror}") from None
  except ValueError as e:
    raise ConfigError(f"config.search.reference: {path} is not JSON ({e})") from None
  if isinstance(obj, dict) and isinstance(obj.get("arch"), dict):  # results.json / subnet.json
    obj = obj["arch"]
  try:
    arch = space.from_json(obj)
  except spaces.InvalidArchError as e:
    raise ConfigError(f"config.search.reference: {path}: {e}") from None
  return arch


COMPARE_VARIANTS = (  # (label, reward, inclusion, algorithm); the proposed method first
    ("R2+inclusion", "R2", True, "evolution"),
    ("R2", "R2", False, "evolution"),
    ("R0", "R0", False, "evolution"),
    ("random R2+inclusion", "R2", True, "random"),
)

STAGES = ("train", "search")


def run(cfg, workdir: str, stop_after: str = "search") -> dict:
  """Run the job described by ``cfg``: train (or resume) the supernet, search a family, report.

  Writes ``checkpoints/``, ``metrics.jsonl``, ``search/``, ``results.json``, ``results.md``,
  the plots and ``subnets/`` into ``workdir``.  ``stop_after='train'`` ends after training.
  """
  if stop_after not in STAGES:
    raise ConfigError(f"--stop_after: {stop_after!r} is not one of {STAGES}")
  check_config(cfg)
  if cfg.supernet.get("init_from"):  # regnas_jax.io.ofa.load_supernet_variables; issue 18
    raise ConfigError("config.supernet.init_from: this job cannot start from imported weights "
                      "yet (wired with the jobs rewrite)")
  space = build_space(cfg)
  net = build_supernet(cfg, space)
  if cfg.search.algorithm == "tunas":  # weights and policy trained together: its own loop
    from regnas_jax import tunas_job
    tunas_job.check_config(cfg, space, ConfigError)
    dataset = load_dataset(cfg, space)
    _log(f"space {space.name}: {space.num_archs():.2e} subnets per resolution, resolutions "
         f"{space.resolutions}; data {dataset.name} ({len(dataset.train)} train / "
         f"{len(dataset.val)} val / {len(dataset.test)} test); backend {jax.default_backend()}")
    return tunas_job.run(cfg, workdir, stop_after, space=space, net=net, dataset=dataset,
                         scorer_cls=Scorer, error=ConfigError, log=_log)
  try:
    train_lib.build_phases(cfg.train, space)
  except train_lib.TrainConfigError as e:
    raise ConfigError(str(e)) from None
  reference = load_reference(cfg, space)
  multi = cfg.search.algorithm == "nsga2"
  if multi:
    try:
      pareto.check_config(cfg.search, space)
    except pareto.ParetoConfigError as e:
      raise ConfigError(str(e)) from None
  else:
    windows = budget_windows(cfg, space)
    lo_all, hi_all = float(space.macs(space.min_arch())), float(space.macs(space.max_arch()))
    for i, (lo, hi) in enumerate(windows):
      if hi < lo_all or lo > hi_all:
        raise ConfigError(f"config.search.budgets: A{i + 1}'s window [{lo / 1e6:.3f}, "
                          f"{hi / 1e6:.3f}] MMACs misses the space's range [{lo_all / 1e6:.3f}, "
                          f"{hi_all / 1e6:.3f}]")
  dataset = load_dataset(cfg, space)
  _log(f"space {space.name}: {space.num_archs():.2e} subnets per resolution, "
       f"resolutions {space.resolutions}; data {dataset.name} ({len(dataset.train)} train / "
       f"{len(dataset.val)} val / {len(dataset.test)} test); backend {jax.default_backend()}")
  init_fn, reorder_fn = supernet_fns(net)
  warm = []
  start_warm_up = lambda: warm.append(warm_up(cfg, net, space, dataset))
  try:
    tr = train_lib.train(cfg, net, space, dataset, workdir, init_fn, reorder_fn, log=_log,
                         on_start=start_warm_up if stop_after == "search" else None)
  except (train_lib.TrainConfigError, data_lib.DataError, ckpt_lib.CheckpointError) as e:
    raise ConfigError(str(e)) from None
  if stop_after == "train":
    return {"training": {"steps": tr.steps, "seconds_this_process": tr.seconds}}

  for w in warm:
    w.join()
  scorer = Scorer(cfg, net, space, tr.variables, dataset)
  t0 = time.time()
  ends = spaces.stack([space.max_arch(), space.min_arch()])
  ends_ok = scorer.correct(ends, "test")
  _log(f"test top-1: max subnet {100 * ends_ok[0].mean():.2f}%, min subnet "
       f"{100 * ends_ok[1].mean():.2f}% ({time.time() - t0:.1f} s, compile included)")

  cache = family_lib.EvalCache(space, lambda pop: scorer.correct(pop, "val"))
  identity = {"training_steps": tr.steps, "space": space.config(), "data": cfg.data.to_dict(),
              "score": cfg.score.to_dict(), "calib_images": cfg.train.calib_images}
  if multi:
    return run_pareto(cfg, workdir, space, net, tr, scorer, cache, identity, reference, ends_ok)
  evo = evolution_config(cfg)
  search_dir = os.path.join(workdir, "search")
  reward = search.parse_reward(cfg.search.reward)

  def run_family(tag, specs, ref):
    try:
      return family_lib.search_family(
          space, specs, cache, evo, seed=cfg.seed, reference=ref,
          nfr_against=cfg.search.nfr_against, state_path=os.path.join(search_dir, f"{tag}.json"),
          identity=identity, log=_log)
    except search.SearchError as e:
      raise ConfigError(str(e)) from None

  t_search = time.time()
  families = {}
  if cfg.search.compare:
    if reference is None:
      reference = run_family("reference", member_specs(cfg, space, reward, True,
                                                        cfg.search.algorithm)[:1], None)[0]["arch"]
    for label, rw, inc, algo in COMPARE_VARIANTS:
      _log(f"comparison variant {label}")
      specs = member_specs(cfg, space, search.parse_reward(rw), inc, algo)
      families[label] = run_family(label.replace(" ", "_").replace("+", "_"), specs, reference)
  else:
    label = (f"{search.rewards.name(reward)}{'+inclusion' if cfg.search.inclusion else ''}"
             f"{' (random search)' if cfg.search.algorithm == 'random' else ''}")
    families[label] = run_family("family", member_specs(
        cfg, space, reward, cfg.search.inclusion, cfg.search.algorithm), reference)
  search_seconds = time.time() - t_search
  _log(f"search done: {cache.scored} distinct subnets scored on {len(scorer.labels('val'))} "
       f"val images in {search_seconds:.1f} s")

  # Test-split evaluation of every family, pairwise NFR, exported subnets.
  results_fams = {}
  for label, members in families.items():
    pop = spaces.stack([m["arch"] for m in members])
    test_ok = scorer.correct(pop, "test")
    val_ok = cache(pop)
    results_fams[label] = family_record(space, members, val_ok, test_ok)
  main_label = next(iter(families))
  main = families[main_label]
  pop = spaces.stack([m["arch"] for m in main])
  stats = scorer.stats(pop)
  sub_dir = os.path.join(workdir, "subnets")
  for i, m in enumerate(main):
    st = jax.tree.map(lambda s, i=i: s[i], stats)
    module, v = nets.extract(net, {"params": tr.variables["params"], "batch_stats": st}, m["arch"])
    export.save_subnet(os.path.join(sub_dir, m["name"]), space, m["arch"], cfg.supernet.to_dict(),
                       v, metrics={k: results_fams[main_label]["members"][i][k]
                                   for k in ("val_top1", "test_top1", "macs", "params")})
  evaluated = [{"macs": int(space.macs(a)), "val_top1": t} for a, t in cache.evaluated()]
  results = run_record(cfg, space, tr, ends_ok,
                       "MACs per image (multiply-accumulates; OFA prints them as MFLOPs)")
  results.update({
      "search": {"seconds": round(search_seconds, 2), "subnets_scored": cache.scored,
                 "val_images": int(len(scorer.labels("val"))),
                 "test_images": int(len(scorer.labels("test")))},
      "family": results_fams[main_label], "family_label": main_label,
      "evaluated": evaluated})
  if cfg.search.compare:
    results["compare"] = results_fams
    results["compare_table"] = report.compare_rows(results_fams, main_label)
  os.makedirs(workdir, exist_ok=True)
  table = report.family_table(results_fams[main_label], main_label)
  if cfg.search.compare:
    table += "\n\n" + report.compare_table(results["compare_table"])
  report.plot_family(os.path.join(workdir, "top1_vs_macs.png"), evaluated, results_fams)
  report.plot_nfr_matrix(os.path.join(workdir, "nfr_matrix.png"), results_fams[main_label])
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  print(table)
  _log(f"wrote results.json, results.md, top1_vs_macs.png, nfr_matrix.png and "
       f"subnets/{{{','.join(m['name'] for m in main)}}} to {workdir}")
  return results


def run_record(cfg, space, tr, ends_ok, macs_note: str) -> dict:
  """The part of ``results.json`` every job writes: config, versions, training and end subnets
  (left out when ``tr`` / ``ends_ok`` are None)."""
  out = {"config": cfg.to_dict(), "space": space.config(), "jax": jax.__version__,
         "backend": jax.default_backend(), "macs_note": macs_note}
  if tr is not None:
    out["training"] = {"steps": tr.steps, "seconds_this_process": round(tr.seconds, 2),
                       "resumed_from": tr.resumed_from,
                       "phases": [p.to_json() for p in tr.phases]}
  if ends_ok is not None:
    out["test_top1"] = {"max": float(ends_ok[0].mean()), "min": float(ends_ok[1].mean())}
  return out


def run_pareto(cfg, workdir, space, net, tr, scorer, cache, identity, reference, ends_ok) -> dict:
  """The NSGA-II job after training: search (resumable), K models along the final front scored on
  the test split, exported with their skips folded, reported and plotted."""
  se = cfg.search
  objectives = tuple(se.objectives)
  ref_val = ref_test = None
  if reference is not None:
    ref_pop = jax.tree.map(lambda x: np.asarray(x)[None], reference)
    ref_val, ref_test = cache(ref_pop)[0], scorer.correct(ref_pop, "test")[0]
  t_search = time.time()
  try:
    state, fronts = pareto.search(space, cache, se, seed=cfg.seed, ref_correct=ref_val,
                                  state_path=os.path.join(workdir, "search", "nsga2.json"),
                                  identity=identity, log=_log)
  except search.SearchError as e:
    raise ConfigError(str(e)) from None
  search_seconds = time.time() - t_search
  _log(f"search done: {cache.scored} distinct subnets scored on {len(scorer.labels('val'))} "
       f"val images in {search_seconds:.1f} s")
  idx = pareto.chosen(state, objectives, int(se.num_models))
  archs = [space.validate(spaces.member(state.population, int(i)), population=False) for i in idx]
  pop = spaces.stack(archs)
  val_ok, test_ok = cache(pop), scorer.correct(pop, "test")
  rows = []
  for k, (a, v_ok, t_ok) in enumerate(zip(archs, val_ok, test_ok)):
    r = {"name": f"K{k + 1}", "arch": space.to_json(a), "summary": space.format(a),
         "macs": int(space.macs(a)), "params": int(space.params(a)),
         "val_top1": float(v_ok.mean()), "test_top1": float(t_ok.mean())}
    if ref_val is not None:
      r["val_nfr"] = float(evaluate.nfr(v_ok, ref_val))
      r["test_nfr"] = float(evaluate.nfr(t_ok, ref_test))
    rows.append(r)
  pareto.export_models(workdir, space, net, tr.variables, scorer.stats(pop), archs, rows,
                       cfg.supernet.to_dict())
  evaluated = [{"macs": int(space.macs(a)), "val_top1": t} for a, t in cache.evaluated()]
  results = run_record(cfg, space, tr, ends_ok,
                       "MACs per image of the exported subnet (multiply-accumulates)")
  results.update({
      "search": {"algorithm": "nsga2", "objectives": list(objectives),
                 "seconds": round(search_seconds, 2), "subnets_scored": cache.scored,
                 "generations": state.generation - 1, "evaluations": state.evaluations,
                 "val_images": int(len(scorer.labels("val"))),
                 "test_images": int(len(scorer.labels("test")))},
      "chosen": rows, "pareto_fronts": fronts, "evaluated": evaluated})
  table = pareto.table(rows, objectives)
  pareto.plot(os.path.join(workdir, "pareto.png"), evaluated, fronts, rows)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  print(table)
  names = ",".join(r["name"] for r in rows)
  _log(f"wrote results.json, results.md, pareto.png and subnets/{{{names}}} to {workdir}")
  return results


def family_record(space, members, val_ok, test_ok) -> dict:
  """JSON record of a family: members with metrics, and pairwise NFR matrices (test and val)."""
  rows = []
  for i, m in enumerate(members):
    rows.append({"name": m["name"], "arch": space.to_json(m["arch"]),
                 "summary": space.format(m["arch"]), "macs": int(space.macs(m["arch"])),
                 "params": int(space.params(m["arch"])), "val_top1": float(val_ok[i].mean()),
                 "test_top1": float(test_ok[i].mean()), "reward": m["reward"],
                 "spec": m["spec"], "search": m["search"]})
  return {"members": rows,
          "nfr_matrix_test": evaluate.nfr_matrix(test_ok).tolist(),
          "relative_nfr_matrix_test": [[None if not np.isfinite(v) else float(v) for v in row]
                                       for row in _rel_matrix(test_ok)],
          "nfr_matrix_val": evaluate.nfr_matrix(val_ok).tolist()}


def _rel_matrix(ok):
  k = len(ok)
  return np.array([[evaluate.relative_nfr(ok[j], ok[i]) if i != j else np.nan for j in range(k)]
                   for i in range(k)], np.float64)


def write_json_atomic(path: str, obj: Any) -> None:
  """Write JSON via a temporary file and a rename, so a crash never leaves half a file."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=_json_default)
  os.replace(tmp, path)


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, (np.ndarray, tuple)):
    return list(np.asarray(x).tolist())
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")
