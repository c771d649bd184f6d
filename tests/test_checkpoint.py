"""Checkpoints: exact round trip, and clear errors for other runs, other shapes, damage."""

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from regnas_jax.checkpoint import Checkpointer, CheckpointError

IDENT = {"space": {"name": "ofa_mbv3", "width_mult": 0.5}, "seed": 0}


def state(scale=1.0, shape=(3, 4)):
  return {"params": {"w": jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape) * scale,
                     "b": jnp.ones(4, jnp.bfloat16)},
          "step": jnp.asarray(7, jnp.int32), "opt": (jnp.zeros(2), None)}


def test_round_trip_latest_and_retention(tmp_path):
  ck = Checkpointer(str(tmp_path / "ck"), IDENT, max_to_keep=2)
  assert ck.latest_step() is None
  for s in (1, 2, 3):
    ck.save(s, state(float(s)), {"data_position": s})
  assert ck.latest_step() == 3
  ck.close()
  assert sorted(os.listdir(tmp_path / "ck")) == ["2", "3"]
  again = Checkpointer(str(tmp_path / "ck"), IDENT)
  got, extra = again.restore(state(0.0))
  assert extra == {"data_position": 3}
  np.testing.assert_array_equal(got["params"]["w"], state(3.0)["params"]["w"])
  assert got["params"]["b"].dtype == jnp.bfloat16 and int(got["step"]) == 7
  got2, extra2 = again.restore(state(0.0), step=2)
  assert extra2["data_position"] == 2 and float(got2["params"]["w"][0, 1]) == 2.0
  again.close()


def test_other_run_is_refused_naming_the_setting(tmp_path):
  ck = Checkpointer(str(tmp_path), IDENT)
  ck.save(5, state())
  ck.close()
  other = Checkpointer(str(tmp_path), {"space": {"name": "ofa_mbv3", "width_mult": 0.25},
                                       "seed": 0})
  with pytest.raises(CheckpointError, match=r"belongs to another run \(space.width_mult: saved "
                                            r"0.5, now 0.25\)"):
    other.restore(state())


def test_shape_mismatch_and_damage_are_clear_errors(tmp_path):
  ck = Checkpointer(str(tmp_path), IDENT)
  ck.save(1, state())
  ck.close()
  ck = Checkpointer(str(tmp_path), IDENT)
  with pytest.raises(CheckpointError, match=r"(shape|cannot restore the arrays)"):
    ck.restore(state(shape=(4, 3)))
  # Damage the array data of the saved step.
  step_dir = tmp_path / "1"
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      p = os.path.join(root, f)
      if os.path.getsize(p) > 0 and not f.endswith(".json") and "METADATA" not in f:
        with open(p, "wb") as fh:
          fh.write(b"\0garbage")
  with pytest.raises(CheckpointError, match="cannot restore the arrays"):
    Checkpointer(str(tmp_path), IDENT).restore(state())
  shutil.rmtree(step_dir / "meta")
  with pytest.raises(CheckpointError, match="unreadable metadata"):
    Checkpointer(str(tmp_path), IDENT).restore(state())


_SAVE_THEN_EXIT = """
import sys, jax.numpy as jnp
from regnas_jax import stopping
from regnas_jax.checkpoint import Checkpointer
ck = Checkpointer(sys.argv[1], {"seed": 0})
ck.save(1, {"w": jnp.arange(1 << 20, dtype=jnp.float32)})
stopping.exit_now("stopped", 143)   # what SIGTERM and the CLI's errors end with
"""


def test_a_save_in_flight_completes_before_the_process_exits(tmp_path):
  """Saves are asynchronous; ``stopping.exit_now`` (os._exit: no interpreter teardown) waits
  for the one in flight, so the step is on disk and restores."""
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _SAVE_THEN_EXIT, str(tmp_path / "ck")],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=root))
  assert out.returncode == 143, out.stderr
  ck = Checkpointer(str(tmp_path / "ck"), {"seed": 0})
  got, _ = ck.restore({"w": jnp.zeros(1 << 20, jnp.float32)})
  np.testing.assert_array_equal(got["w"], np.arange(1 << 20, dtype=np.float32))
  ck.close()
