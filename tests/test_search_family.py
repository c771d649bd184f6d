"""The REG-NAS family search on a synthetic evaluator: windows and inclusion hold between
members, the reward trades accuracy for flips, same seed gives the same family, and a search
killed mid-way resumes from its JSON state to the same family."""

import json

import jax
import numpy as np
import pytest

from regnas_jax import metrics, spaces
from regnas_jax.errors import StateError
from regnas_jax.search import EvolutionConfig, family

SP = spaces.OFAMobileNetV3Space(width_mult=0.5, stem="small", num_classes=10, resolutions=(8,))
CFG = EvolutionConfig(population_size=8, generations=3, proposal_batch=64)
RNG = np.random.default_rng(0)
THRESH = RNG.uniform(0.2, 0.9, 400)
W = RNG.normal(size=(45, 400)) * 0.6


def correct_fn(pop):
  """Per-sample correctness that grows with the arch's size, plus arch-dependent noise (so that
  archs of similar size still flip different samples)."""
  x = np.concatenate([pop.depth / 2, pop.kernel / 2, pop.expand / 2], 1).astype(np.float64)
  return (x.mean(1, keepdims=True) + 0.15 * np.tanh(x @ W)) > THRESH


def specs(reward=(1.0, 1.0), inclusion=True, algorithm="evolution"):
  mx = float(SP.macs(SP.max_arch()))
  return [family.MemberSpec(f"A{i + 1}", 0.85 * b * mx, b * mx, (1.0, 0.0) if i == 0 else reward,
                            inclusion and i > 0, algorithm)
          for i, b in enumerate((0.35, 0.6, 0.9))]


def search(path=None, **kw):
  """A family search; with ``path`` its evaluation cache is saved beside the state, as the
  jobs keep it (``path`` + ``.cache.npz``)."""
  cache = family.EvalCache(SP, kw.pop("fn", correct_fn), path and path + ".cache.npz", {"t": 1})
  return family.search_family(SP, kw.pop("specs", specs()), cache, CFG, seed=kw.pop("seed", 0),
                              state_path=path, log=lambda m: None, **kw), cache


def test_members_respect_windows_and_contain_each_other():
  members, cache = search()
  assert [m["name"] for m in members] == ["A1", "A2", "A3"]
  for m, s in zip(members, specs()):
    assert s.macs_low <= SP.macs(m["arch"]) <= s.macs_high
  for small, big in zip(members, members[1:]):
    assert SP.contains(big["arch"], small["arch"])
  ok = correct_fn(spaces.stack([m["arch"] for m in members]))
  for i, m in enumerate(members):          # records agree with an independent recomputation
    assert m["val_top1"] == metrics.top1(ok[i])
    if i:
      assert m["val_nfr"] == metrics.nfr(ok[i], ok[i - 1])
      assert m["reward"] == pytest.approx(m["val_top1"] - m["val_nfr"])
  assert cache.scored == len(cache.evaluated()) <= 3 * CFG.evaluations
  # one progress record per generation; the last one's best is the member's
  for m in members:
    prog = m["search"]["progress"]
    assert [g["generation"] for g in prog] == list(range(CFG.generations + 1))
    assert [g["best_reward"] for g in prog] == m["search"]["best_per_generation"]
    assert (prog[-1]["best_top1"], prog[-1]["best_nfr"]) == (m["val_top1"], m["val_nfr"])
    assert all(g["mean_reward"] <= g["best_reward"] for g in prog)
  assert members[-1]["search"]["progress"][-1]["scored"] == cache.scored
  rec = cache.records()
  assert len(rec) == cache.scored and list(rec[0]) == ["macs", "val_top1", "arch"]
  for (a, t), r in zip(cache.evaluated(), rec):   # readable archs that read back (canonical)
    back = SP.arch_from_dict(r["arch"])
    assert cache.key(back) == cache.key(a) and SP.arch_to_dict(back) == r["arch"]
    assert r["macs"] == SP.macs(back) == SP.macs(a) and r["val_top1"] == t


def test_reward_picks_the_best_candidate_by_its_lambdas():
  """Random search proposes the same candidates whatever the reward (same seed), so R1 (flips
  only) must end with no more flips than R0 (accuracy only), and R0 with no less accuracy."""
  r0, c0 = search(specs=specs((1.0, 0.0), inclusion=False, algorithm="random"))
  r1, c1 = search(specs=specs((0.0, 1.0), inclusion=False, algorithm="random"))
  assert list(c0.table) == list(c1.table)                   # the very same candidates
  for j in (1, 2):
    assert r1[j]["val_nfr"] <= r0[j]["val_nfr"] and r0[j]["val_top1"] >= r1[j]["val_top1"]
  assert (r1[1]["val_nfr"], r1[2]["val_nfr"]) != (r0[1]["val_nfr"], r0[2]["val_nfr"])


def test_fixed_reference_is_not_searched():
  ref = jax.tree.map(np.asarray, SP.min_arch())
  mx = float(SP.macs(SP.max_arch()))
  sp_ = [family.MemberSpec("A1", 0, mx), family.MemberSpec("A2", 0.5 * mx, 0.7 * mx)]
  members, _ = search(specs=sp_, reference=ref)
  jax.tree.map(np.testing.assert_array_equal, members[0]["arch"], SP.validate(ref))
  assert members[0]["search"] is None and SP.contains(members[1]["arch"], ref)


class Killed(Exception):
  pass


def test_same_seed_same_family_and_killed_search_resumes(tmp_path):
  total = [0]

  def counting(pop):
    total[0] += 1
    return correct_fn(pop)

  whole, _ = search(fn=counting)
  again, _ = search()
  for a, b in zip(whole, again):
    jax.tree.map(np.testing.assert_array_equal, a["arch"], b["arch"])
  path = str(tmp_path / "search.json")
  first = total[0] // 3
  for kill_at in (first, (total[0] - first) // 2):   # during A1, then later in the resumed run
    calls = [0]

    def dying(pop, kill_at=kill_at):
      calls[0] += 1
      if calls[0] > kill_at:
        raise Killed
      return correct_fn(pop)

    with pytest.raises(Killed):
      search(path, fn=dying)
    saved = json.loads(open(path).read())
    assert saved["current"] is not None or saved["members"]
  resumed, _ = search(path)
  for a, b in zip(whole, resumed):
    jax.tree.map(np.testing.assert_array_equal, a["arch"], b["arch"])
    assert a["val_top1"] == b["val_top1"] and a["reward"] == b["reward"]
    assert a["search"] == b["search"]   # its progress too: generations before the kill kept
  # another search in the same file is refused, the file is kept
  before = open(path).read()
  with pytest.raises(StateError, match=r"belongs to another run \(seed: saved 0, now 1\)"):
    search(path, seed=1)
  assert open(path).read() == before
