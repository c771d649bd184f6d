"""The training loop's finite-parameter guard (regnas_jax/training/loop.py).

The loop itself -- checkpoints, resumption, SIGTERM, the non-finite-loss stop -- is exercised end
to end in tests/test_faults.py and tests/test_train.py; here the parameter check's two paths (on
the host for arrays this process holds whole, one compiled program otherwise) are checked
against each other and against numpy on trees with NaN and inf in different leaves."""

import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.training import loop


def _tree(rng):
  return {"conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32),
                   "bias": jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16)},
          "dense": [jnp.asarray(rng.normal(size=(8, 10)), jnp.float32)],
          "count": jnp.arange(5), "flag": np.array([True, False])}


@pytest.mark.parametrize("where, bad", [(None, None), (("conv", "kernel"), np.nan),
                                        (("conv", "bias"), np.inf), (("dense", 0), -np.inf)])
def test_the_host_and_the_compiled_check_agree_with_numpy(where, bad):
  rng = np.random.default_rng(0)
  tree = _tree(rng)
  if where is not None:
    outer, inner = where
    leaf = np.array(tree[outer][inner], np.float32)
    leaf.reshape(-1)[rng.integers(leaf.size)] = bad
    tree[outer][inner] = jnp.asarray(leaf, tree[outer][inner].dtype)
  floats = [tree["conv"]["kernel"], tree["conv"]["bias"], tree["dense"][0]]
  expected = all(np.isfinite(np.asarray(x, np.float32)).all() for x in floats)
  assert expected == (where is None)
  assert loop._finite_tree(tree) is expected                       # host path (all addressable)
  assert bool(loop._all_finite([jnp.asarray(x) for x in floats])) is expected   # compiled path


def test_a_tree_without_floating_leaves_is_finite():
  assert loop._finite_tree({"step": jnp.int32(3), "mask": np.ones(4, bool)})
  assert loop._finite_tree({})


def test_a_step_that_leaves_non_finite_parameters_stops_before_its_save(tmp_path):
  """Finite losses, but the parameters turn NaN at step 3: the save after step 4 is refused
  with the error naming the step, and the checkpoint of step 2 is the newest one on disk."""
  from regnas_jax import checkpoint, progress

  def step(s, state):
    w = state["params"]["w"] + 1.0
    if s == 2:                                   # the third step
      w = w.at[1].set(jnp.nan)
    return {"params": {"w": w}}, {"loss": jnp.float32(1.0)}

  ck = checkpoint.Checkpointer(str(tmp_path / "ckpt"), {"test": "finite guard"})
  metrics = progress.MetricsLog(str(tmp_path / "metrics.jsonl"))
  with pytest.raises(loop.NonFiniteError, match="parameters are not finite after step 4"):
    loop.run_loop({"params": {"w": jnp.zeros(3)}}, step, start=0, total=6, checkpointer=ck,
                  metrics=metrics, desc="t", record=lambda s, pending: {"n": len(pending)},
                  params_of=lambda st: st["params"], checkpoint_every=2, log_every=2,
                  progress_every=100)
  ck.close()
  assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2]
