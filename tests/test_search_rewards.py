"""REG-NAS reward presets and parsing."""

import numpy as np
import pytest

from regnas_jax.search import rewards


def test_presets_and_values():
  assert rewards.parse_reward("R0") == (1.0, 0.0)
  assert rewards.parse_reward("r1") == (0.0, 1.0)
  assert rewards.parse_reward("R2") == (1.0, 1.0)
  assert rewards.parse_reward("1,0.5") == (1.0, 0.5)
  assert rewards.parse_reward((2, 1)) == (2.0, 1.0)
  np.testing.assert_allclose(rewards.reward([0.9, 0.8], [0.05, 0.01], (1.0, 1.0)), [0.85, 0.79])
  np.testing.assert_allclose(rewards.reward(0.9, 0.05, (1.0, 0.0)), 0.9)
  np.testing.assert_allclose(rewards.reward(0.9, 0.05, (0.0, 1.0)), -0.05)
  np.testing.assert_allclose(rewards.reward(0.9, 0.05, (0.5, 2.0)), 0.35)
  assert rewards.name((1.0, 1.0)) == "R2" and rewards.name((1, 0.5)) == "1,0.5"


@pytest.mark.parametrize("spec", ["R3", "1", "a,b", (0, 0), (-1, 1), "1,2,3", "inf,1"])
def test_bad_rewards_are_refused(spec):
  with pytest.raises(ValueError, match="reward"):
    rewards.parse_reward(spec)
