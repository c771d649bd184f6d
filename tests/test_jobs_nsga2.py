"""The NSGA-II job on a search space: objectives, constraints, per-generation fronts, resume after a
kill, config errors.  Accuracy comes from a synthetic per-sample correctness that depends on the
architecture (no supernet), so the search itself is what is tested."""

import json

import ml_collections
import numpy as np
import pytest
import tbevents

from regnas_jax import report
from regnas_jax.defaults import nsga2_defaults
from regnas_jax.errors import ConfigError
from regnas_jax.jobs import nsga2 as job
from regnas_jax.search import nsga2
from regnas_jax.search.family import EvalCache
from regnas_jax.spaces import ScarletArch, ScarletS1Space

SP = ScarletS1Space(width_mult=0.25, stem="small", num_classes=10, resolutions=(8,))
N = 400  # synthetic "validation samples"


def synthetic_correct(pop):
  """Bool (P, N): sample j is right when a fixed, arch-dependent score exceeds its difficulty;
  bigger blocks score higher, so Top-1 and MACs trade off."""
  op = np.asarray(pop.op)
  gain = np.where(op == 0, 0.0, 1.0 + 0.15 * op)                       # (P, 19)
  score = (gain * np.linspace(1.0, 0.5, op.shape[1])).sum(1) / 25.0     # (P,)
  difficulty = np.random.default_rng(0).random(N)
  return score[:, None] > difficulty[None, :]


def config(**kw):
  se = nsga2_defaults()
  se.update(dict(population_size=12, generations=5, proposal_batch=32, num_models=3))
  se.update(kw)
  return se


class Killed(Exception):
  pass


def run(tmp_path, se, kill_after=None, ref_correct=None, **kw):
  cache = EvalCache(SP, synthetic_correct, str(tmp_path / "search" / "cache.npz"), {"test": 1})
  logs = []

  def log(msg):
    logs.append(msg)
    if kill_after is not None and msg.startswith(f"NSGA-II generation {kill_after}/"):
      raise Killed

  state, fronts = job.search(SP, cache, se, seed=3, ref_correct=ref_correct,
                                state_path=str(tmp_path / "search" / "nsga2.json"),
                                identity={"test": 1}, log=log, **kw)
  return state, fronts, logs, cache


def test_progress_per_generation_to_tensorboard_and_kept_on_resume(tmp_path):
  """Each generation's record (front size and area, best Top-1, subnets scored) is saved with
  the state and written as ``search/<key>`` scalars; a search killed after generation 2
  resumes with the records before the kill."""
  from regnas_jax.jobs.base import JobContext, SearchEvents

  se = config(max_macs=0.6)
  work = tmp_path / "w"
  cfg = ml_collections.ConfigDict({"runtime": {"tensorboard": True}})
  events = SearchEvents(JobContext(cfg, str(work), SP, None, None))
  progress = []
  state, fronts, _, cache = run(work, se, events=events, progress=progress)
  events.close()
  assert [g["generation"] for g in progress] == list(range(se.generations + 1))
  mx = float(SP.macs(SP.max_arch()))
  for g, fr in zip(progress, fronts):
    assert g["front_size"] == len(fr) and g["best_top1"] == max(r["top1"] for r in fr)
    assert g["front_area"] == report.front_area(fr, mx) and g["infeasible"] == 0
  assert progress[-1]["scored"] == cache.scored
  tags = tbevents.scalars(str(work / "tensorboard"))
  assert set(tags) == {f"search/{k}" for k in ("front_size", "front_area", "best_top1",
                                                "scored", "infeasible")}
  assert tags["search/front_size"] == [(g["generation"], g["front_size"]) for g in progress]
  with pytest.raises(Killed):
    run(tmp_path / "b", se, kill_after=2)
  again = []
  run(tmp_path / "b", se, progress=again)
  assert again == progress


def test_constraints_fronts_and_equispaced_choice(tmp_path):
  limit = 0.6
  se = config(max_macs=limit, min_top1=0.3)
  state, fronts, _, cache = run(tmp_path, se)
  mx = SP.macs(SP.max_arch())
  macs = [SP.macs(a) for a, _ in cache.evaluated()]
  assert max(macs) <= limit * mx                                # cheap: nothing above was scored
  top1 = synthetic_correct(state.population).mean(1)
  assert top1.min() >= 0.3 and np.allclose(-state.objectives[:, 0], top1)   # expensive
  assert len(fronts) == se.generations + 1
  for fr in fronts:                                             # each recorded front is one
    f = np.array([[-r["top1"], r["macs"]] for r in fr])
    assert (nsga2.non_dominated_sort(f) == 0).all()
  idx = job.chosen(state, tuple(se.objectives), 3)
  m = state.objectives[idx, 1]
  assert len(idx) == 3 and np.all(np.diff(m) > 0)


def test_resume_after_a_kill_gives_the_same_search(tmp_path):
  ref = synthetic_correct(ScarletArch(np.zeros((1,), np.int32), np.full((1, 19), 2, np.int32)))
  se = config(objectives=("top1", "macs", "nfr"), weights=(1.0, 1.0, 0.5), reference="ref.json")
  full, fronts_full, _, cache_full = run(tmp_path / "a", se, ref_correct=ref[0])
  with pytest.raises(Killed):
    run(tmp_path / "b", se, kill_after=2, ref_correct=ref[0])
  saved = json.loads((tmp_path / "b" / "search" / "nsga2.json").read_text())
  assert saved["state"]["generation"] == 3
  again, fronts_again, logs, cache = run(tmp_path / "b", se, ref_correct=ref[0])
  assert any("resumed the NSGA-II search" in m for m in logs)
  # the evaluation cache came back with the state: the resumed run reports every scored subnet
  assert cache.evaluated() and [t for _, t in cache.evaluated()] == [
      t for _, t in cache_full.evaluated()]
  assert cache.scored == cache_full.scored > cache.scored_now
  np.testing.assert_array_equal(again.objectives, full.objectives)
  np.testing.assert_array_equal(again.population.op, full.population.op)
  assert fronts_again == fronts_full
  # NFR is a real column: against the reference's correct set
  nfr = (ref[0][None] & ~synthetic_correct(full.population)).mean(1)
  np.testing.assert_allclose(full.objectives[:, 2], nfr)
  # another configuration refuses the saved state
  with pytest.raises(Exception, match="belongs to another run"):
    run(tmp_path / "b", config(objectives=("top1", "params")))


@pytest.mark.parametrize("kw, msg", [
    (dict(objectives=("top1",)), "need at least two distinct objectives"),
    (dict(objectives=("top1", "latency")), "'latency' is not one of"),
    (dict(objectives=("top1", "nfr")), "config.search.reference: the 'nfr' objective needs"),
    (dict(weights=(1.0,)), "weights: 1 given for 2 objectives"),
    (dict(max_macs=1.5), "config.search.max_macs: a fraction"),
    (dict(max_macs=1e-9), "below the smallest subnet"),
    (dict(min_top1=2.0), "config.search.min_top1"),
    (dict(num_models=0), "config.search.num_models"),
    (dict(p_rm=0.5), "p_rm + p_re + p_pr: must sum to 1"),
])
def test_config_errors_name_the_key(kw, msg):
  se = config(**kw)
  with pytest.raises(ConfigError, match=msg.replace("+", r"\+")):
    job.NSGA2Job().check(ml_collections.ConfigDict({"search": se}), SP)


def test_defaults_are_table_1():
  se = nsga2_defaults()
  assert (se.population_size, se.mutation_ratio, se.p_rm, se.p_re, se.p_pr, se.p_m, se.p_k_m) == (
      70, 0.8, 0.2, 0.65, 0.15, 0.7, 0.3)
  assert isinstance(se, ml_collections.ConfigDict)


def test_front_area_and_run_comparison(tmp_path, capsys):
  front = [{"macs": 50.0, "top1": 0.6}, {"macs": 20.0, "top1": 0.4}]
  # budgets 0-20: nothing, 20-50: 0.4, 50-100: 0.6 (fractions of 100)
  assert report.front_area(front, 100.0) == pytest.approx(0.3 * 0.4 + 0.5 * 0.6)
  res = {"search": {"algorithm": "nsga2"}, "test_top1": {"max": 0.9, "min": 0.2},
         "space": SP.config(),
         "evaluated": [{"macs": m, "val_top1": t} for m, t in ((20, 0.4), (50, 0.6), (100, 0.5))],
         "pareto_fronts": [front], "chosen": [{"test_top1": 0.41}, {"test_top1": 0.58}]}
  s = report.summarize_pareto(res)
  assert s["val_top1_mean"] == pytest.approx(0.5) and s["front_size"] == 2
  assert s["front_area"] == pytest.approx(report.front_area(front, SP.macs(SP.max_arch())))
  assert s["val_top1_std"] == pytest.approx(np.std([0.4, 0.6, 0.5]))
  for name in ("els", "plain"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "results.json").write_text(json.dumps(res))
  assert report.main([str(tmp_path / "els"), str(tmp_path / "plain")]) == 0
  out = capsys.readouterr().out
  assert out.count("| 90.00 / 20.00% | 3 | 50.00 ± 8.16% |") == 2 and "41.00 / 58.00%" in out
  assert report.main([str(tmp_path / "missing")]) == 2
  assert "cannot read" in capsys.readouterr().err
