"""TuNAS's search policy (Bender et al., CVPR 2020): independent categoricals trained by REINFORCE.

The pieces of TuNAS's search that do not depend on a supernet, as pure functions of plain pytrees
(facts from TuNAS's released code, ``tunas/controller.py``, ``mobile_architecture_search.py``,
``search_space_utils.py``; summarised in the project's notes):

* **Policy**: one vector of logits per decision element (field ``f`` of shape ``s`` with ``k``
  choices has logits ``s + (k,)``), initialised to zero, no RNN.  Architectures are sampled
  element-wise; log-probability and entropy sum over the *active* decisions only (a kernel choice
  inside a skipped layer does not count), as TuNAS's hierarchical mode does.
* **REINFORCE**: loss ``-(reward - baseline) * log_prob(arch)`` (advantage held constant), the
  baseline an exponential moving average of the reward (momentum 0.95, zero-debiased), Adam with
  ``b1 = 0``.  The RL learning rate is 0 for the first ``delay_fraction`` (25%) of the search and
  then grows exponentially to ``increase`` (10) times its base value at the end.
* **Rewards** of quality Q and cost T against a target T0: absolute ``Q + beta * |T / T0 - 1|``
  (TuNAS's default, beta = -0.1), soft exponential ``Q * (T / T0) ** beta`` (MnasNet) and hard
  exponential ``Q * min((T / T0) ** beta, 1)``.
* **Warmup schedules**: the probability of filter warmup (all filters) and op warmup (all ops
  averaged) falls linearly from 1 to 0 over the first ``fraction`` (25%) of the search.

A space that is a :class:`~regnas_jax.spaces.PolicySpace` says which choices are valid
(``choice_mask``) and which decisions are active (``active_decisions``); for any other space every
choice is valid and every decision counts.
The weight-sharing supernet, the alternating train step and the run wiring come separately.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regnas_jax.spaces.base import PolicySpace

REWARDS = ("abs", "soft", "hard")


class ControllerConfig(NamedTuple):
  learning_rate: float = 0.0048     # TuNAS: 0.0003 per 256 images, batch 4096
  beta2: float = 0.999
  eps: float = 1e-8
  baseline_momentum: float = 0.95
  delay_fraction: float = 0.25      # RL learning rate held at 0 (TuNAS after FBNet)
  increase: float = 10.0            # exponential growth of the RL learning rate after the delay
  entropy_weight: float = 0.0       # TuNAS supports it, off by default
  temperature: float = 1.0

  def check(self) -> None:
    """Raise ``ValueError`` naming the first bad field."""
    for k in ("learning_rate", "eps", "temperature", "increase"):
      if not getattr(self, k) > 0:
        raise ValueError(f"{k}: must be > 0, got {getattr(self, k)!r}")
    for k in ("beta2", "baseline_momentum", "delay_fraction"):
      if not 0 <= getattr(self, k) < 1:
        raise ValueError(f"{k}: must be in [0, 1), got {getattr(self, k)!r}")
    if self.entropy_weight < 0:
      raise ValueError(f"entropy_weight: must be >= 0, got {self.entropy_weight!r}")


class ControllerState(NamedTuple):
  """The policy and everything its update needs (a pytree; checkpoint it as one)."""
  logits: dict          # field name -> float32 (*field.shape, num_choices)
  opt_state: Any
  baseline_num: jax.Array   # zero-debiased EMA: num / den is the baseline
  baseline_den: jax.Array
  step: jax.Array           # search step (int32)


# -- policy ----------------------------------------------------------------------------------
INVALID_LOGIT = -1e9  # finite: exp() is exactly 0 and 0 * logit stays 0 in the entropy


def init_logits(space) -> dict:
  """Zero logits for every decision element of ``space`` (a uniform policy).

  A space with ``choice_mask()`` (bool ``shape + (k,)`` per field) gets ``INVALID_LOGIT`` on
  the invalid choices: they are never sampled and their gradient is exactly zero.
  """
  masks = space.choice_mask() if isinstance(space, PolicySpace) else {}
  out = {}
  for f in space.fields():
    z = jnp.zeros(f.shape + (f.size,), jnp.float32)
    out[f.name] = jnp.where(jnp.asarray(masks[f.name]), z, INVALID_LOGIT) if f.name in masks else z
  return out


def policy_entropy(space, logits: dict, temperature: float = 1.0) -> jax.Array:
  """Entropy of the whole policy (every decision element, active or not), in nats."""
  total = jnp.float32(0.0)
  for f in space.fields():
    lp = jax.nn.log_softmax(logits[f.name] / temperature, -1)
    total = total - (jnp.exp(lp) * lp).sum()
  return total


def probabilities(space, logits: dict, temperature: float = 1.0) -> dict:
  """Readable policy: per field, per element, ``{choice: probability}`` (concrete logits)."""
  out = {}
  for f in space.fields():
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits[f.name]) / temperature, -1))
    flat = p.reshape(-1, f.size)
    rows = [{str(base_readable(c)): round(float(x), 4) for c, x in zip(f.choices, r) if x > 0}
            for r in flat]
    out[f.name] = rows[0] if not f.shape else rows
  return out


def base_readable(v):
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v)).lower()
  return int(v) if float(v).is_integer() else float(v)


def _active(space, arch) -> dict:
  if isinstance(space, PolicySpace):
    return space.active_decisions(arch)
  return {f.name: jnp.ones(f.shape, bool) for f in space.fields()}


def sample(space, logits: dict, key: jax.Array, temperature: float = 1.0):
  """One architecture drawn element-wise from the policy (jit/vmap friendly)."""
  keys = jax.random.split(key, len(space.fields()))
  return space.arch_type(**{
      f.name: jax.random.categorical(k, logits[f.name] / temperature).astype(jnp.int32)
      for k, f in zip(keys, space.fields())})


def argmax_arch(space, logits: dict):
  """The most likely architecture (TuNAS's final architecture: argmax of every decision)."""
  return space.arch_type(**{f.name: jnp.argmax(logits[f.name], -1).astype(jnp.int32)
                            for f in space.fields()})


def log_prob(space, logits: dict, arch, temperature: float = 1.0) -> jax.Array:
  """Sum of the log-probabilities of ``arch``'s choices over its active decisions."""
  act = _active(space, arch)
  total = jnp.float32(0.0)
  for f in space.fields():
    lp = jax.nn.log_softmax(logits[f.name] / temperature, -1)
    chosen = jnp.take_along_axis(lp, jnp.asarray(getattr(arch, f.name))[..., None], -1)[..., 0]
    total = total + jnp.where(act[f.name], chosen, 0.0).sum()
  return total


def entropy(space, logits: dict, arch, temperature: float = 1.0) -> jax.Array:
  """Entropy of the policy summed over the decisions active in ``arch``."""
  act = _active(space, arch)
  total = jnp.float32(0.0)
  for f in space.fields():
    lp = jax.nn.log_softmax(logits[f.name] / temperature, -1)
    total = total + jnp.where(act[f.name], -(jnp.exp(lp) * lp).sum(-1), 0.0).sum()
  return total


# -- schedules and rewards --------------------------------------------------------------------
def rl_learning_rate(step, total_steps: int, cfg: ControllerConfig):
  """0 during the delay, then ``learning_rate * increase ** progress`` (progress 0 -> 1)."""
  start = cfg.delay_fraction * total_steps
  progress = jnp.clip((step - start) / jnp.maximum(total_steps - start, 1.0), 0.0, 1.0)
  return jnp.where(step < start, 0.0, cfg.learning_rate * cfg.increase ** progress)


def warmup_probability(step, total_steps: int, fraction: float = 0.25):
  """Filter / op warmup probability: 1 at step 0, falling linearly to 0 at ``fraction`` of the
  search (0 afterwards; ``fraction=0``: no warmup)."""
  if fraction <= 0:
    return jnp.zeros_like(jnp.asarray(step, jnp.float32))
  return jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / (fraction * total_steps), 0.0, 1.0)


def reward(kind: str, quality, cost, target: float, beta: float = -0.1):
  """TuNAS's rewards (``search_space_utils``): ``'abs'`` ``Q + beta |T/T0 - 1|``, ``'soft'``
  ``Q (T/T0)^beta`` and ``'hard'`` ``Q min((T/T0)^beta, 1)``; ``beta < 0`` penalises cost."""
  ratio = jnp.asarray(cost, jnp.float32) / target
  q = jnp.asarray(quality, jnp.float32)
  if kind == "abs":
    return q + beta * jnp.abs(ratio - 1.0)
  if kind == "soft":
    return q * ratio ** beta
  if kind == "hard":
    return q * jnp.minimum(ratio ** beta, 1.0)
  raise ValueError(f"reward: {kind!r} is not one of {REWARDS}")


# -- REINFORCE --------------------------------------------------------------------------------
def _adam(cfg: ControllerConfig, lr):
  return optax.adam(lr, b1=0.0, b2=cfg.beta2, eps=cfg.eps)


def init(space, cfg: ControllerConfig = ControllerConfig()) -> ControllerState:
  cfg.check()
  logits = init_logits(space)
  return ControllerState(logits, _adam(cfg, 0.0).init(logits), jnp.float32(0.0),
                         jnp.float32(0.0), jnp.int32(0))


def baseline(state: ControllerState) -> jax.Array:
  """The zero-debiased moving average of past rewards (0 before the first update)."""
  return jnp.where(state.baseline_den > 0, state.baseline_num / jnp.maximum(state.baseline_den,
                                                                             1e-12), 0.0)


def update(space, state: ControllerState, arch, reward, total_steps: int,
           cfg: ControllerConfig = ControllerConfig()):
  """One REINFORCE step for the sampled ``arch`` and its scalar reward ``reward``.

  The advantage is ``reward`` minus the baseline of the *previous* rewards (then the baseline
  takes ``reward`` in); with a zero learning rate (the delay) the policy does not move but the
  baseline still learns.  Returns ``(state, metrics)``; pure, jit it with ``space``/
  ``total_steps``/``cfg`` static.  :func:`update_shards` with one shard.
  """
  return update_shards(space, state, jax.tree.map(lambda x: jnp.asarray(x)[None], arch),
                       jnp.asarray(reward)[None], total_steps, cfg)


def update_shards(space, state: ControllerState, archs, rewards, total_steps: int,
                  cfg: ControllerConfig = ControllerConfig()):
  """One REINFORCE step from ``S`` shards, as TuNAS runs on ``S`` accelerator cores: shard
  ``s`` sampled ``archs[s]`` and measured ``rewards[s]`` (``(S,)``) on its own slice of the RL
  batch.  Each shard's advantage is its reward minus the shared baseline of previous steps; the
  policy gradient is the mean of the shards' gradients (a cross-replica mean) and the baseline
  takes in the mean reward.  Returns ``(state, metrics)`` (metrics averaged over the shards).
  """
  rewards = jnp.asarray(rewards, jnp.float32)
  adv = jax.lax.stop_gradient(rewards - baseline(state))

  def loss(lg):
    def one(arch, a):
      obj = a * log_prob(space, lg, arch, cfg.temperature)
      if cfg.entropy_weight:
        obj = obj + cfg.entropy_weight * entropy(space, lg, arch, cfg.temperature)
      return -obj
    return jax.vmap(one)(archs, adv).mean()

  grads = jax.grad(loss)(state.logits)
  lr = rl_learning_rate(state.step, total_steps, cfg)
  updates, opt_state = _adam(cfg, lr).update(grads, state.opt_state, state.logits)
  m, r = cfg.baseline_momentum, rewards.mean()
  new = ControllerState(optax.apply_updates(state.logits, updates), opt_state,
                        m * state.baseline_num + (1 - m) * r, m * state.baseline_den + (1 - m),
                        state.step + 1)
  ent = jax.vmap(lambda a: entropy(space, state.logits, a, cfg.temperature))(archs).mean()
  return new, {"advantage": adv.mean(), "lr": lr, "baseline": baseline(new), "entropy": ent}
