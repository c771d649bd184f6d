"""config.runtime: its checks, the persistent compilation cache across processes, and a short
training run with the profiler window, TensorBoard events and compile time kept apart from the
images per second; the run metadata of results.json."""

import importlib.util
import json
import os
import subprocess
import sys

import ml_collections
import pytest
import tbevents

from regnas_jax import runtime
from regnas_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config():
  spec = importlib.util.spec_from_file_location("digits_mbv3_cfg",
                                                os.path.join(ROOT, "configs", "digits_mbv3.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("smoke")


@pytest.mark.parametrize("key, value, message", [
    ("tensorboard", "yes", "config.runtime.tensorboard: must be True or False"),
    ("profile_steps", (3, 3), "config.runtime.profile_steps: must be () or (start, stop)"),
    ("profile_steps", (1,), "config.runtime.profile_steps: must be () or (start, stop)"),
    ("compilation_cache_min_compile_s", -1.0,
     "config.runtime.compilation_cache_min_compile_s: must be a number >= 0"),
    ("compilation_cache_dir", None, "config.runtime.compilation_cache_dir: must be a path"),
    ("xla_flags", "-O3", "config.runtime.xla_flags: must be '' or XLA flags"),
])
def test_bad_runtime_values_are_one_line_errors(key, value, message):
  cfg = smoke_config()
  cfg.runtime = ml_collections.ConfigDict({**cfg.runtime.to_dict(), key: value})  # any type
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    runtime.check(cfg)


def test_an_unknown_runtime_key_is_refused_before_anything_is_written(tmp_path):
  from regnas_jax import jobs

  cfg = smoke_config()
  cfg.runtime.tensorbord = True
  with pytest.raises(ConfigError, match=r"config.runtime.tensorbord: no such setting"):
    jobs.run(cfg, str(tmp_path / "w"), log=lambda m: None)
  assert not os.path.exists(tmp_path / "w")


def test_a_config_without_a_runtime_section_runs_with_the_defaults():
  cfg = ml_collections.ConfigDict({"name": "x"})
  runtime.check(cfg)
  assert runtime.settings(cfg) == {"compilation_cache_dir": "auto", "tensorboard": False,
                                   "compilation_cache_min_compile_s": 0.0, "xla_flags": "",
                                   "profile_steps": ()}
  assert runtime.tensorboard_dir(cfg, "/w") is None


def cfg_with_cache(value):
  return ml_collections.ConfigDict({"runtime": {"compilation_cache_dir": value}})


def test_the_cache_directory_is_on_by_default_moved_by_the_env_or_config_and_switched_off():
  auto = cfg_with_cache("auto")
  home = os.path.join(os.path.expanduser("~"), ".cache", "regnas-jax", "xla")
  assert runtime.cache_dir(auto, {}) == (home, "default")
  assert runtime.cache_dir(ml_collections.ConfigDict({"name": "no runtime section"}), {}) == (
      home, "default")
  assert runtime.cache_dir(auto, {"XDG_CACHE_HOME": "/xdg"}) == ("/xdg/regnas-jax/xla",
                                                                  "default")
  env = {"REGNAS_JAX_CACHE_DIR": "/mine", "XDG_CACHE_HOME": "/xdg",
         "JAX_COMPILATION_CACHE_DIR": "/jax"}
  assert runtime.cache_dir(auto, env) == ("/mine", "env")
  assert runtime.cache_dir(auto, dict(env, REGNAS_JAX_CACHE_DIR="off")) == (None, "off")
  del env["REGNAS_JAX_CACHE_DIR"]       # JAX's own variable: JAX's set-up is kept
  assert runtime.cache_dir(auto, env) == ("/jax", "jax")
  assert runtime.cache_dir(cfg_with_cache("/cfg"), dict(env, REGNAS_JAX_CACHE_DIR="/mine")) == (
      "/cfg", "config")
  for off in ("off", ""):
    assert runtime.cache_dir(cfg_with_cache(off), {"REGNAS_JAX_CACHE_DIR": "/mine"}) == (
        None, "off")
  assert runtime.setup(cfg_with_cache("off"), environ={}) is None


def test_the_suite_keeps_its_own_cache():
  """conftest.py's per-run cache (JAX_COMPILATION_CACHE_DIR): a job's default set-up leaves it
  in place, and never touches the user's cache directory."""
  import jax

  before = jax.config.jax_compilation_cache_dir
  assert "REGNAS_JAX_CACHE_DIR" not in os.environ and before
  assert before == os.environ["JAX_COMPILATION_CACHE_DIR"]
  logs = []
  assert runtime.setup(cfg_with_cache("auto"), logs.append) == before
  assert jax.config.jax_compilation_cache_dir == before and logs == []


def test_a_cache_directory_that_cannot_be_written_is_a_warning(tmp_path):
  import jax

  before = jax.config.jax_compilation_cache_dir
  (tmp_path / "file").write_text("not a folder")
  bad = str(tmp_path / "file" / "xla")
  logs = []
  assert runtime.setup(cfg_with_cache(bad), logs.append, environ={}) is None
  assert runtime.setup(cfg_with_cache("auto"), logs.append,
                       environ={"REGNAS_JAX_CACHE_DIR": bad}) is None
  assert [ln.split(" (")[0] for ln in logs] == [
      f"warning: the compilation cache {bad} cannot be written"] * 2
  assert "config.runtime.compilation_cache_dir" in logs[0]
  assert "REGNAS_JAX_CACHE_DIR" in logs[1]
  assert jax.config.jax_compilation_cache_dir == before


def test_xla_flags_join_the_environment_before_the_backend_starts():
  cfg = ml_collections.ConfigDict({"runtime": {
      "xla_flags": "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_thunk_runtime=true"}})
  env, logs = {"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=false"}, []
  assert runtime.apply_xla_flags(cfg, logs.append, env, started=False) == [
      "--xla_llvm_disable_expensive_passes=true"]        # the environment's value of a flag wins
  assert env["XLA_FLAGS"] == ("--xla_cpu_use_thunk_runtime=false "
                              "--xla_llvm_disable_expensive_passes=true")
  assert runtime.apply_xla_flags(cfg, logs.append, env, started=True) == [] and logs == []
  env = {}
  assert runtime.apply_xla_flags(cfg, logs.append, env, started=True) == [] and env == {}
  assert logs == ["warning: config.runtime.xla_flags: JAX has started its backend in this "
                  "process, --xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_thunk_runtime=true not applied"]
  import jax

  jax.devices()      # this process's backend has started: asked of JAX, nothing is added
  env = {}
  assert runtime.apply_xla_flags(cfg, lambda m: None, env) == [] and env == {}
  assert runtime.apply_xla_flags(ml_collections.ConfigDict({}), environ=env, started=False) == []
  assert smoke_config().runtime.xla_flags == "--xla_llvm_disable_expensive_passes=true"


_PREPARE = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("cfg", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
from regnas_jax import jobs
logs = []
jobs.prepare(mod.get_config("smoke"), sys.argv[2], "train", log=logs.append)
import jax
jax.devices()
print(os.environ.get("XLA_FLAGS"), [m for m in logs if "warn" in m])
"""


def test_a_job_sets_its_xla_flags_before_jax_starts(tmp_path):
  """The digits default's flag reaches XLA_FLAGS in a process that runs its job: the job's
  set-up comes before anything starts JAX's backend (no warning)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _PREPARE, os.path.join(ROOT, "configs",
                                                                     "digits_mbv3.py"),
                        str(tmp_path / "w")], capture_output=True, text=True,
                       env=dict(env, PYTHONPATH=ROOT), timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ["--xla_llvm_disable_expensive_passes=true", "[]"]


_CACHED_PROGRAM = """
import sys, jax, jax.numpy as jnp, ml_collections
from regnas_jax import runtime
hits = []
jax.monitoring.register_event_listener(
    lambda name, **kw: hits.append(name) if name.endswith("cache_hits") else None)
cfg = ml_collections.ConfigDict({"runtime": {"compilation_cache_dir": sys.argv[1],
                                             "compilation_cache_min_compile_s": 0.0}})
runtime.setup(cfg)
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 3.0)
f(jnp.ones((8, 8))).block_until_ready()
print(len(hits))
"""


@pytest.mark.parametrize("where", ["config", "default"])
def test_a_second_process_loads_its_programs_from_the_compilation_cache(tmp_path, where):
  """``config``: a directory named in the config; ``default``: 'auto' with neither
  REGNAS_JAX_CACHE_DIR nor JAX's variable set, i.e. $XDG_CACHE_HOME/regnas-jax/xla (here in
  tmp_path, not the user's)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "REGNAS_JAX_CACHE_DIR")}
  env.update(PYTHONPATH=ROOT, XDG_CACHE_HOME=str(tmp_path / "xdg"))
  cache = str(tmp_path / "cache") if where == "config" else str(tmp_path / "xdg" / "regnas-jax"
                                                                / "xla")

  def run():
    out = subprocess.run([sys.executable, "-c", _CACHED_PROGRAM,
                          cache if where == "config" else "auto"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])

  assert run() == 0                         # first process: compiles and fills the cache
  entries = os.listdir(cache)
  assert any(e.startswith("jit_") for e in entries)
  assert run() >= 1                         # second: the program comes from the cache
  assert sorted(os.listdir(cache)) == sorted(entries)


def test_a_three_step_run_traces_logs_events_and_keeps_compile_time_apart(tmp_path):
  from regnas_jax import jobs, training
  from regnas_jax.progress import MetricsLog

  cfg = smoke_config()
  cfg.train.update(dict(steps=3, log_every=1, checkpoint_every=3, progress_every=1,
                        warmup_steps=1))
  cfg.runtime.update(dict(tensorboard=True, profile_steps=(1, 2)))
  work = str(tmp_path / "w")
  lines = []
  _, ctx = jobs.prepare(cfg, work, "train", log=lines.append)
  training.train(ctx.cfg, ctx.net, ctx.space, ctx.dataset, work, log=lines.append)
  # The trace of step 1 (the profiler's layout: plugins/profile/<run>/<host>.xplane.pb).
  traces = [f for _, _, files in os.walk(os.path.join(work, "profile")) for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces
  assert any("profile of steps 1..1" in ln for ln in lines)
  # Step 1 compiled the program: its time is compile_s, and no images/s comes of it.
  recs = MetricsLog(os.path.join(work, "metrics.jsonl")).read()
  assert [r["step"] for r in recs] == [1, 2, 3]
  assert recs[0]["compile_s"] > 0 and recs[0]["images_per_s"] is None
  assert all(r["compile_s"] == 0 and r["images_per_s"] > 0 for r in recs[1:])
  assert sum("compiled and run once" in ln for ln in lines) == 1
  events = os.listdir(os.path.join(work, "tensorboard"))
  assert len(events) == 1 and events[0].startswith("events.out.tfevents.")
  # Named per subnet role of the sandwich rule (3 subnets: largest, smallest, one random);
  # compile seconds and the resolution are in metrics.jsonl only.
  tags = tbevents.scalars(os.path.join(work, "tensorboard"))
  roles = [f"{m}/{r}" for m in ("acc", "loss") for r in ("largest", "smallest", "random")]
  assert set(tags) == {"loss", "grad_norm", "lr", "images_per_s", *roles}
  assert [s for s, _ in tags["acc/largest"]] == [1, 2, 3]
  assert [v for _, v in tags["acc/smallest"]] == pytest.approx([r["acc/smallest"] for r in recs])
  assert all("resolution" in r and "compile_s" in r for r in recs)


def test_run_metadata_names_the_devices_and_the_code():
  meta = runtime.run_metadata()
  import jax

  assert meta["device_count"] == jax.device_count() and meta["process_count"] == 1
  assert meta["device_kind"] == jax.devices()[0].device_kind
  assert meta["versions"]["jax"] == jax.__version__ and meta["versions"]["flax"]
  json.dumps(meta)   # goes into results.json
  if os.path.exists(os.path.join(ROOT, ".git")):
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert meta["code"]["git"] == head and isinstance(meta["code"]["dirty"], bool)
  else:
    assert "version" in meta["code"]
