"""TuNAS's policy pieces: REINFORCE on a bandit, active-decision log-prob/entropy, rewards,
learning-rate and warmup schedules."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.search import tunas
from regnas_jax.spaces import base

import helpers


class Toy(NamedTuple):
  x: jax.Array  # (6,) 4 choices each
  y: jax.Array  # (2,) 3 choices each; only active where x[0] != 0 ("layer not skipped")


@dataclasses.dataclass(frozen=True)
class ToySpace(helpers.ToySpaceBase):
  name = "toy"
  arch_type = Toy

  def fields(self):
    return (base.Field("x", (6,), (0, 1, 2, 3)), base.Field("y", (2,), (0, 1, 2)))

  warmup_fields = ()

  def choice_mask(self):
    return {f.name: np.ones(f.shape + (f.size,), bool) for f in self.fields()}

  def active_decisions(self, arch):
    return {"x": jnp.ones(6, bool), "y": jnp.broadcast_to(jnp.asarray(arch.x)[0] != 0, (2,))}


SP = ToySpace()
BEST = Toy(np.array([3, 1, 2, 0, 1, 3], np.int32), np.array([2, 0], np.int32))


def bandit_reward(arch, key):
  """Share of decisions at their best arm (y counts only when active), plus noise."""
  hits = jnp.sum(arch.x == BEST.x) + jnp.where(arch.x[0] != 0, jnp.sum(arch.y == BEST.y), 0)
  return hits / 8.0 + 0.05 * jax.random.normal(key)


def test_reinforce_converges_to_the_best_arm_of_every_decision():
  total = 600
  cfg = tunas.ControllerConfig(learning_rate=0.05)

  def step(state, key):
    k1, k2 = jax.random.split(key)
    arch = tunas.sample(SP, state.logits, k1)
    state, m = tunas.update(SP, state, arch, bandit_reward(arch, k2), total, cfg)
    return state, m["lr"]

  state, lrs = jax.jit(lambda s, k: jax.lax.scan(step, s, jax.random.split(k, total)))(
      tunas.init(SP, cfg), jax.random.key(0))
  best = tunas.argmax_arch(SP, state.logits)
  np.testing.assert_array_equal(best.x, BEST.x)
  np.testing.assert_array_equal(best.y, BEST.y)
  assert np.all(np.asarray(lrs[:total // 4]) == 0) and np.asarray(lrs[-1]) > 0.4   # 10x at the end
  probs = jax.nn.softmax(state.logits["x"], -1)
  assert float(probs[np.arange(6), BEST.x].min()) > 0.5


def test_no_policy_change_during_the_delay_but_the_baseline_learns():
  cfg = tunas.ControllerConfig()
  state = tunas.init(SP, cfg)
  arch = tunas.sample(SP, state.logits, jax.random.key(1))
  for r in (1.0, 0.0, 1.0):
    state, m = tunas.update(SP, state, arch, r, 100, cfg)
    assert m["lr"] == 0
  assert all(np.all(np.asarray(v) == 0) for v in state.logits.values())
  m = cfg.baseline_momentum  # zero-debiased EMA of 1, 0, 1
  num = (1 - m) * (m * m * 1 + m * 0 + 1)
  assert float(tunas.baseline(state)) == pytest.approx(num / (1 - m ** 3), rel=1e-5)


def test_log_prob_and_entropy_ignore_inactive_decisions():
  rng = np.random.default_rng(0)
  logits = {"x": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
            "y": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)}
  other = dict(logits, y=logits["y"] + jnp.asarray(rng.normal(size=(2, 3)), jnp.float32))

  def by_hand(lg, arch, active_y):
    lp = {k: np.asarray(jax.nn.log_softmax(v, -1)) for k, v in lg.items()}
    val = sum(lp["x"][i, arch.x[i]] for i in range(6))
    ent = sum(-(np.exp(lp["x"][i]) * lp["x"][i]).sum() for i in range(6))
    if active_y:
      val += sum(lp["y"][i, arch.y[i]] for i in range(2))
      ent += sum(-(np.exp(lp["y"][i]) * lp["y"][i]).sum() for i in range(2))
    return val, ent

  skipped = Toy(np.array([0, 1, 2, 3, 0, 1], np.int32), np.array([1, 2], np.int32))
  used = skipped._replace(x=np.array([2, 1, 2, 3, 0, 1], np.int32))
  for arch, active in ((skipped, False), (used, True)):
    lp, ent = by_hand(logits, arch, active)
    assert float(tunas.log_prob(SP, logits, arch)) == pytest.approx(lp, rel=1e-5)
    assert float(tunas.entropy(SP, logits, arch)) == pytest.approx(ent, rel=1e-5)
  # changing the logits of inactive decisions changes nothing; of active ones, something
  assert float(tunas.log_prob(SP, other, skipped)) == pytest.approx(
      float(tunas.log_prob(SP, logits, skipped)))
  assert float(tunas.log_prob(SP, other, used)) != pytest.approx(
      float(tunas.log_prob(SP, logits, used)))


@pytest.mark.parametrize("kind, q, t, t0, beta, want", [
    ("abs", 0.7, 90.0, 84.0, -0.1, 0.7 - 0.1 * abs(90 / 84 - 1)),
    ("abs", 0.7, 70.0, 84.0, -0.1, 0.7 - 0.1 * abs(70 / 84 - 1)),
    ("soft", 0.7, 90.0, 84.0, -0.07, 0.7 * (90 / 84) ** -0.07),
    ("soft", 0.7, 70.0, 84.0, -0.07, 0.7 * (70 / 84) ** -0.07),   # faster: rewarded
    ("hard", 0.7, 90.0, 84.0, -0.07, 0.7 * (90 / 84) ** -0.07),
    ("hard", 0.7, 70.0, 84.0, -0.07, 0.7),                          # faster: no bonus
])
def test_rewards_against_hand_computed_values(kind, q, t, t0, beta, want):
  assert float(tunas.reward(kind, q, t, t0, beta)) == pytest.approx(want, rel=1e-6)


def test_reward_and_config_errors():
  with pytest.raises(ValueError, match="reward: 'mnas' is not one of"):
    tunas.reward("mnas", 0.5, 1.0, 1.0)
  with pytest.raises(ValueError, match="delay_fraction"):
    tunas.ControllerConfig(delay_fraction=1.0).check()


def test_schedules():
  cfg = tunas.ControllerConfig(learning_rate=0.01)
  lr = np.asarray(jax.vmap(lambda s: tunas.rl_learning_rate(s, 1000, cfg))(jnp.arange(1001)))
  assert np.all(lr[:250] == 0)
  assert lr[250] == pytest.approx(0.01) and lr[1000] == pytest.approx(0.1, rel=1e-5)
  assert lr[625] == pytest.approx(0.01 * 10 ** 0.5, rel=1e-5) and np.all(np.diff(lr[250:]) > 0)
  p = np.asarray(tunas.warmup_probability(jnp.arange(1001), 1000, 0.25))
  assert p[0] == 1 and p[125] == pytest.approx(0.5) and np.all(p[250:] == 0)
  assert np.all(np.diff(p[:251]) < 0)
  assert np.all(np.asarray(tunas.warmup_probability(jnp.arange(5), 1000, 0.0)) == 0)


def test_invalid_choices_are_never_sampled_and_never_learned():
  """A space's choice_mask (duplicate widths in ProxylessNAS-Enlarged at quarter width): the
  policy gives those choices zero probability, their logits get zero gradient, entropies stay
  finite and count only the valid choices."""
  from regnas_jax.spaces import get_space
  sp = get_space("proxylessnas_enlarged", width_mult=0.25, stem="small", num_classes=10,
                 resolutions=(8,))
  cfg = tunas.ControllerConfig(learning_rate=0.5, delay_fraction=0.0)
  st = tunas.init(sp, cfg)
  mask = sp.choice_mask()["filters"]
  archs = jax.vmap(lambda k: tunas.sample(sp, st.logits, k))(jax.random.split(jax.random.key(0),
                                                                               2000))
  f = np.asarray(archs.filters)
  assert mask[np.arange(mask.shape[0]), f].all()
  for g in range(mask.shape[0]):   # uniform over the valid ones
    counts = np.bincount(f[:, g], minlength=mask.shape[1])[mask[g]]
    assert np.all(np.abs(counts - 2000 / len(counts)) < 5 * np.sqrt(2000 / len(counts)))
  h = float(tunas.policy_entropy(sp, st.logits))
  want = sum(np.log(m.sum()) for m in mask) + sum(
      np.prod(fl.shape, dtype=int) * np.log(fl.size) for fl in sp.fields() if fl.name != "filters")
  assert abs(h - want) < 1e-3
  a = jax.tree.map(lambda x: x[0], archs)
  for r in (1.0, -1.0, 2.0):
    st, _ = tunas.update(sp, st, a, r, 100, cfg)
  lg = np.asarray(st.logits["filters"])
  assert np.all(lg[~mask] == tunas.INVALID_LOGIT) and np.all(np.isfinite(lg))
  assert np.abs(lg[mask]).max() > 0   # valid logits moved


def test_sharded_update_is_the_mean_of_the_shards_reinforce_gradients():
  """Three shards, each with its own architecture and reward: the policy moves by one Adam
  (b1 = 0) step on the mean of ``-(r_s - b) * d log p(a_s)``, written out here by hand, and the
  baseline takes in the mean reward."""
  cfg = tunas.ControllerConfig(learning_rate=0.01, delay_fraction=0.0)
  st = tunas.init(SP, cfg)
  st = st._replace(baseline_num=jnp.float32(0.02), baseline_den=jnp.float32(0.05))  # b = 0.4
  adam = st.opt_state[0]   # second moments of 1 so far: the step is linear in the gradient
  st = st._replace(opt_state=(adam._replace(nu=jax.tree.map(jnp.ones_like, adam.nu)),)
                   + tuple(st.opt_state[1:]))
  archs = jax.vmap(lambda k: tunas.sample(SP, st.logits, k))(jax.random.split(jax.random.key(3), 3))
  rewards = np.array([0.2, 0.9, 0.5], np.float32)
  new, m = tunas.update_shards(SP, st, archs, rewards, 100, cfg)

  grads = []
  for s in range(3):
    a = jax.tree.map(lambda x: x[s], archs)
    g = jax.grad(lambda lg: tunas.log_prob(SP, lg, a))(st.logits)
    grads.append(jax.tree.map(lambda t: -(rewards[s] - 0.4) * np.asarray(t), g))
  g = jax.tree.map(lambda *t: np.mean(t, 0), *grads)
  # Adam's first step with b1 = 0 (m = g) and nu = 1 before it:
  # v = b2 + (1 - b2) g^2, v_hat = v / (1 - b2), step -lr g / (sqrt(v_hat) + eps).
  v_hat = jax.tree.map(lambda gg: (cfg.beta2 + (1 - cfg.beta2) * gg ** 2) / (1 - cfg.beta2), g)
  want = jax.tree.map(lambda lg, gg, v: np.asarray(lg) - 0.01 * gg / (np.sqrt(v) + cfg.eps),
                      st.logits, g, v_hat)
  for f in want:
    np.testing.assert_allclose(np.asarray(new.logits[f]), want[f], rtol=1e-5, atol=1e-6)
  assert any(np.abs(want[f] - np.asarray(st.logits[f])).max() > 1e-5 for f in want)
  b = (0.95 * 0.02 + 0.05 * rewards.mean()) / (0.95 * 0.05 + 0.05)
  np.testing.assert_allclose(float(tunas.baseline(new)), b, rtol=1e-6)
  np.testing.assert_allclose(float(m["advantage"]), rewards.mean() - 0.4, rtol=1e-5)
  # one shard: the single-architecture update
  one, _ = tunas.update(SP, st, jax.tree.map(lambda x: x[1], archs), rewards[1], 100, cfg)
  solo, _ = tunas.update_shards(SP, st, jax.tree.map(lambda x: x[1:2], archs), rewards[1:2],
                                100, cfg)
  for f in want:
    np.testing.assert_array_equal(np.asarray(one.logits[f]), np.asarray(solo.logits[f]))
