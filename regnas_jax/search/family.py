"""The REG-NAS family search: A1 under the smallest budget, then each larger member under its
budget and the weight-inclusion constraint with respect to the previous member.

Member ``i > 1`` is searched with the reward ``lambda1 * Top1(a) - lambda2 * NFR(a, ref)`` where
``ref`` is member ``i - 1`` (``nfr_against='previous'``) or, averaged, all smaller members
(``'all'``), and -- if its spec asks for inclusion -- every candidate contains member ``i - 1``
(hence, by transitivity, all smaller members).  A1 is either given (a fixed reference) or
searched for accuracy alone.  Top-1 and NFR come from real forward passes of every candidate on
the holdout-validation split (an accuracy predictor cannot predict sample-wise flips).

The search is saved as JSON after every generation, together with the evaluation cache (every
subnet scored so far and its per-sample correctness); started again with the same identity it
resumes where it stopped, reaches the same family and reports the same scored subnets.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
from typing import Any, Callable

import jax
import numpy as np

from regnas_jax import identity as identity_lib
from regnas_jax import metrics as metrics_lib
from regnas_jax import fs, persist
from regnas_jax.errors import SearchError, StateError
from regnas_jax.search import evolution, random_search, rewards
from regnas_jax.search.constraints import Constraint
from regnas_jax.search.evolution import EvolutionConfig
from regnas_jax.spaces.base import pop_size

ALGORITHMS = {"evolution": evolution, "random": random_search}
NFR_AGAINST = ("previous", "all")


@dataclasses.dataclass(frozen=True)
class MemberSpec:
  """How one family member is searched."""
  name: str
  macs_low: float
  macs_high: float
  reward: tuple = (1.0, 1.0)
  inclusion: bool = True
  algorithm: str = "evolution"

  def to_dict(self) -> dict:
    return {"name": self.name, "macs_low": float(self.macs_low), "macs_high": float(self.macs_high),
            "reward": list(map(float, self.reward)), "inclusion": bool(self.inclusion),
            "algorithm": self.algorithm}


class EvalCache:
  """Memoised per-sample correctness of architectures on one split.

  ``correct_fn(pop) -> bool (P, N)`` is called only for architectures not seen before (keyed by
  their canonical form, so unused choices do not create duplicates).  Every evaluated
  architecture is remembered with its Top-1, in order, for reports and plots.

  With ``path`` the cache is persistent: entries saved by a run with the same ``identity`` are
  loaded on construction, and :meth:`save` (called by the searches before they save their
  state) writes new entries atomically, so a resumed search neither scores an architecture
  twice nor forgets what it scored before the restart.
  """

  def __init__(self, space, correct_fn: Callable[[Any], np.ndarray], path: str | None = None,
               identity: Any = None):
    self.space, self.correct_fn = space, correct_fn
    self.path, self.identity = path, persist.jsonable(identity)
    self.table: dict[bytes, np.ndarray] = {}
    self.archs: dict[bytes, Any] = {}
    self.scored_now = 0      # scored by this process
    self._saved = 0
    if path:
      fs.barrier(f"read {path}")   # every process of a multi-process run loads the same cache
      try:
        if fs.exists(path):
          self._load()
      finally:
        fs.barrier(f"read {path} done")

  @property
  def scored(self) -> int:
    """Distinct architectures scored so far (also before a restart)."""
    return len(self.table)

  def key(self, arch) -> bytes:
    a = self.space.canonicalize(jax.tree.map(np.asarray, arch))
    return b"|".join(np.asarray(x, np.int32).tobytes() for x in a)

  def __call__(self, pop) -> np.ndarray:
    pop = jax.tree.map(np.asarray, pop)
    keys = [self.key(jax.tree.map(lambda x, i=i: x[i], pop)) for i in range(pop_size(pop))]
    first = {}  # each unseen key once, at its first position
    for i, k in enumerate(keys):
      if k not in self.table:
        first.setdefault(k, i)
    new = list(first.values())
    if new:
      sub = jax.tree.map(lambda x: x[np.asarray(new)], pop)
      got = np.asarray(self.correct_fn(sub), bool)
      for j, i in enumerate(new):
        self.table[keys[i]] = got[j]
        self.archs[keys[i]] = jax.tree.map(lambda x, i=i: x[i], pop)
      self.scored_now += len(new)
    return np.stack([self.table[k] for k in keys])

  def evaluated(self) -> list[tuple[Any, float]]:
    """``(arch, top1)`` of every architecture scored so far, in order."""
    return [(self.archs[k], float(self.table[k].mean())) for k in self.archs]

  def records(self) -> list[dict]:
    """Every architecture scored so far, in order, as ``results.json`` lists them: its MACs,
    its Top-1 on this split and the architecture in readable form (``space.arch_to_dict``;
    ``space.arch_from_dict`` reads it back)."""
    return [{"macs": int(self.space.macs(a)), "val_top1": t, "arch": self.space.arch_to_dict(a)}
            for a, t in self.evaluated()]

  def save(self) -> None:
    """Write the cache to ``path`` (atomically) if it has entries not saved yet."""
    if not self.path or len(self.table) == self._saved:
      return
    keys = list(self.archs)
    archs = {f"arch_{k}": np.stack([np.asarray(getattr(self.archs[h], k)) for h in keys])
             for k in self.space.arch_type._fields}
    correct = np.stack([self.table[h] for h in keys])
    buf = io.BytesIO()
    np.savez(buf, identity=np.array(json.dumps(self.identity, sort_keys=True)),
             samples=np.int64(correct.shape[1]), correct=np.packbits(correct, axis=1), **archs)
    if fs.is_writer():
      fs.write_bytes(self.path, buf.getvalue())   # as a whole: the old cache or the new one
    self._saved = len(keys)

  def _load(self) -> None:
    try:
      with np.load(io.BytesIO(fs.read_bytes(self.path)), allow_pickle=False) as z:
        saved_id = json.loads(str(z["identity"]))
        diff = identity_lib.difference(saved_id, self.identity)
        if diff:
          raise StateError(f"{self.path} belongs to another run ({diff}); use another --workdir "
                           f"or remove that file")
        n = int(z["samples"])
        correct = np.unpackbits(z["correct"], axis=1, count=n).astype(bool)
        fields = {k: z[f"arch_{k}"] for k in self.space.arch_type._fields}
    except StateError:
      raise
    except Exception as e:  # noqa: BLE001 - any damage: one line, the file stays as it is
      raise StateError(f"{self.path}: damaged evaluation cache ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}); remove it to score again"
                       ) from None
    pop = self.space.validate(self.space.arch_type(**fields), population=True)
    for i in range(len(correct)):
      a = jax.tree.map(lambda x, i=i: x[i], pop)
      k = self.key(a)
      self.table[k], self.archs[k] = correct[i], a
    self._saved = len(self.table)


def _arch_dict(arch) -> dict:
  return {k: np.asarray(v).tolist() for k, v in arch._asdict().items()}


def search_family(space, specs: list[MemberSpec], cache: EvalCache, cfg: EvolutionConfig, *,
                  seed: int, reference=None, nfr_against: str = "previous",
                  state_path: str | None = None, identity: dict | None = None,
                  log: Callable[[str], None] = print,
                  on_generation: Callable[[str, dict], None] | None = None) -> list[dict]:
  """Search the members of ``specs`` in order; returns one record per member.

  Args:
    space: the search space.
    specs: one :class:`MemberSpec` per member, smallest budget first.  With ``reference`` set,
      ``specs[0]`` names the reference and is not searched.
    cache: an :class:`EvalCache` on the holdout-validation split (shared between searches).
    cfg: evolution/random-search settings.
    seed: base seed; member ``i`` searches with ``seed + 1000 * i``.
    reference: a fixed architecture for A1, or ``None`` to search it.
    nfr_against: 'previous' or 'all' (mean NFR against every smaller member).
    state_path: JSON file the search is saved to after every generation (and resumed from).
    identity: JSON-able description of everything the result depends on; a saved search with
      another identity is refused.
    on_generation: called with ``(member name, record)`` after every generation (the record of
      the member's ``search.progress``), e.g. to log it to TensorBoard.
  Returns:
    Per member: ``name``, ``arch`` (numpy arch), ``val_top1``, ``val_nfr`` (against its
    reference members), ``reward``, ``macs``, ``spec`` and the search summary (with
    ``progress``: one record per generation, saved with the state so a resumed search keeps
    the generations before the restart).
  """
  if nfr_against not in NFR_AGAINST:
    raise ValueError(f"nfr_against: {nfr_against!r} is not one of {NFR_AGAINST}")
  cfg.check()
  ident = persist.jsonable({
      "identity": identity or {}, "specs": [s.to_dict() for s in specs],
      "search": dict(cfg._asdict()), "seed": int(seed), "nfr_against": nfr_against,
      "reference": None if reference is None else _arch_dict(space.validate(reference))})
  members, current, progress = _resume(space, specs, state_path, ident, log)

  def save(cur):
    if not state_path:
      return
    ms = [dict(m, arch=_arch_dict(m["arch"])) for m in members]
    cache.save()   # first: the state never refers to scores the cache lacks
    persist.save_state(state_path, ident, members=ms,
                       current=None if cur is None else evolution.state_to_dict(cur),
                       progress=progress if cur is not None else [])

  for i, spec in enumerate(specs):
    if i < len(members):
      continue
    refs = members if nfr_against == "all" else members[-1:]
    score = functools.partial(_scores, cache, refs=refs, nfr_against=nfr_against)
    if i == 0 and reference is not None:
      arch = space.validate(reference, population=False)
      top1 = float(metrics_lib.top1(cache(_one(arch)))[0])
      members.append(_record(space, spec, arch, top1, 0.0, None, None))
      log(f"{spec.name}: fixed reference, val top-1 {100 * top1:.2f}%, "
          f"{space.macs(arch) / 1e6:.3f} MMACs")
      save(None)
      continue
    prev = members[-1]["arch"] if members and spec.inclusion else None
    constraint = Constraint(spec.macs_low, spec.macs_high, prev)
    state = current if current is not None else ALGORITHMS[spec.algorithm].init(seed + 1000 * i)
    current = None
    log(f"{spec.name}: {spec.algorithm} search, reward {rewards.name(spec.reward)}, "
        f"{constraint.describe()}, {cfg.evaluations} evaluations")
    state = _evolve(space, spec, constraint, cache, cfg, state, score=score, save=save, log=log,
                    progress=progress, on_generation=on_generation)
    arch, fit = state.best()
    btop, bnfr = score(cache(_one(arch)))
    members.append(_record(space, spec, arch, float(btop[0]), float(bnfr[0]) if refs else 0.0,
                           fit, state, progress=progress))
    progress = []
    save(None)
  return members


def _one(arch):
  """A population of the one architecture ``arch``."""
  return jax.tree.map(lambda x: np.asarray(x)[None], arch)


def _scores(cache: EvalCache, correct, refs: list[dict], nfr_against: str):
  """``(top1, nfr)`` per member of a population whose correctness is ``correct``: NFR against
  the last of the members ``refs`` (``'previous'``) or their mean (``'all'``); 0 without any."""
  top1 = metrics_lib.top1(correct)
  if not refs:
    return top1, np.zeros_like(top1)
  ref_ok = [cache(_one(m["arch"]))[0] for m in refs]
  per = np.stack([metrics_lib.nfr(correct, r[None]) for r in ref_ok])
  return top1, (per[-1] if nfr_against == "previous" else per.mean(0))


def _resume(space, specs: list[MemberSpec], state_path: str | None, ident: dict, log):
  """``(members done, state of the member in search or None, its generations' records)``
  saved at ``state_path`` for the search ``ident``; ``([], None, [])`` for a new search."""
  def parse(saved):
    done = [dict(m, arch=space.validate(m["arch"], population=False)) for m in saved["members"]]
    cur = saved.get("current")
    return (done, None if cur is None else evolution.state_from_dict(space, cur),
            list(saved.get("progress") or []) if cur is not None else [])

  loaded = persist.read_state(state_path, ident, parse) if state_path else None
  if loaded is None:
    return [], None, []
  members, current, _ = loaded
  log(f"resumed the search from {state_path}: {len(members)} member(s) done"
      + (f", {specs[len(members)].name} at generation {current.generation}" if current else ""))
  return loaded


def _evolve(space, spec: MemberSpec, constraint: Constraint, cache: EvalCache,
            cfg: EvolutionConfig, state, *, score, save, log, progress: list, on_generation=None):
  """One member's search from ``state`` to its last generation: each generation's candidates
  scored (``score(correct) -> (top1, nfr)``), told to the algorithm, its record (best reward,
  its top-1 and NFR, the mean reward, subnets scored so far) appended to ``progress``, then
  saved, passed to ``on_generation(member name, record)`` and logged."""
  algo = ALGORITHMS[spec.algorithm]
  while not algo.done(state, cfg):
    t = time.time()
    before = cache.scored
    cand = algo.ask(space, constraint, cfg, state)
    if not constraint.check(space, cand).all():  # an algorithm bug, never a silent drop
      raise SearchError(f"{spec.name}: a candidate violates {constraint.describe()}")
    top1, nfr_ = score(cache(cand))
    fit = rewards.reward(top1, nfr_, spec.reward)
    state = algo.tell(state, cand, fit, cfg)
    b = state.best_index
    btop, bnfr = score(cache(jax.tree.map(lambda x: x[[b]], state.population)))  # scored before
    rec = {"generation": state.generation - 1, "best_reward": float(state.fitness[b]),
           "best_top1": float(btop[0]), "best_nfr": float(bnfr[0]),
           "mean_reward": float(np.mean(fit)), "scored": cache.scored}
    progress.append(rec)
    save(state)
    if on_generation is not None:
      on_generation(spec.name, rec)
    log(f"{spec.name} generation {rec['generation']}/{cfg.generations}: best reward "
        f"{rec['best_reward']:.4f} (top-1 {100 * btop[0]:.2f}%, NFR {100 * bnfr[0]:.2f}%), "
        f"{cache.scored - before} new subnets scored in {time.time() - t:.1f} s")
  return state


def _record(space, spec: MemberSpec, arch, top1, nfr_, fit, state, progress=()) -> dict:
  arch = space.validate(jax.tree.map(np.asarray, arch), population=False)
  return {"name": spec.name, "arch": arch, "val_top1": top1, "val_nfr": nfr_, "reward": fit,
          "macs": int(space.macs(arch)), "spec": spec.to_dict(),
          "search": None if state is None else {
              "algorithm": state.algorithm, "generations": state.generation - 1,
              "evaluations": state.evaluations, "best_per_generation": list(state.history),
              "progress": list(progress)}}
