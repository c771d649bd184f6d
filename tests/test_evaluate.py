"""Population scoring: vmapped, chunked and member-by-member agree."""

import jax
import jax.numpy as jnp
import numpy as np

from regnas_jax import evaluate
from regnas_jax.spaces import member


def close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5)


def test_chunked_equals_vmapped_equals_one_by_one(tiny):
  sp, net, v, x = tiny
  pop = sp.sample(jax.random.key(2), 5)
  full = evaluate.population_logits(net, v, x, pop, train=True)
  close(evaluate.population_logits(net, v, x, pop, train=True, chunk_size=2), full)
  one = jax.jit(lambda a: net.apply(v, x, a, train=True, mutable=["batch_stats"])[0])
  for i in range(5):
    close(full[i], one(member(pop, i)))


def test_member_stats_and_correctness(tiny):
  sp, net, v, x = tiny
  pop = sp.sample(jax.random.key(3), 3)
  stats = jax.tree.map(lambda s: jnp.stack([s, s * 2.0, s + 1.0]), v["batch_stats"])
  vs = {"params": v["params"], "batch_stats": stats}
  per = evaluate.population_logits(net, vs, x, pop, member_stats=True)
  one = jax.jit(lambda vi, a: net.apply(vi, x, a))
  for i in range(3):
    close(per[i], one({"params": v["params"], "batch_stats": member(stats, i)}, member(pop, i)))
  labels = np.asarray(jnp.argmax(per[1], -1))
  correct = evaluate.population_correct(net, vs, x, labels, pop, member_stats=True)
  assert correct.shape == (3, 5) and correct[1].all()
