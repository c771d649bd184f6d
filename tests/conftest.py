"""Shared fixtures (a tiny OFA-MobileNetV3 supernet) and one XLA compilation cache per test run.

The suite is dominated by XLA compiles, and many programs recur: in both pytest-xdist workers,
in test parametrizations, and in the ``run_search.py`` subprocesses.  The controller creates a
fresh persistent compilation cache directory for the run and exports it, so every worker and
subprocess compiles a given program once.  Results are unaffected (the cache stores compiled
executables keyed by the program, its options and the jax version); a run starts empty.  The
user's own cache (``~/.cache/regnas-jax/xla``, ``REGNAS_JAX_CACHE_DIR``) is never read or
written: runs in the suite keep the cache JAX set up from ``JAX_COMPILATION_CACHE_DIR``.
"""

import os
import shutil
import tempfile

# The suite's programs are tiny and compile-bound: XLA:CPU compiles them faster without LLVM's
# expensive passes (27% less compile time, measured on a masked supernet of the ImageNet
# layout).  Set before jax starts; the subprocesses inherit it.
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()

import jax  # noqa: E402
import pytest

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = []
# The suite never uses the user's cache (runtime.cache_dir: with REGNAS_JAX_CACHE_DIR unset and
# JAX_COMPILATION_CACHE_DIR set, a run keeps JAX's own set-up, i.e. this run's cache below).
os.environ.pop("REGNAS_JAX_CACHE_DIR", None)


def pytest_configure(config):
  if os.environ.get(_CACHE_ENV) is None and not hasattr(config, "workerinput"):
    path = tempfile.mkdtemp(prefix="regnas-jax-xla-cache-")
    _OWN_CACHE.append(path)
    os.environ[_CACHE_ENV] = path   # inherited by the xdist workers and by subprocesses
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  if os.environ.get(_CACHE_ENV):
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")))


def pytest_unconfigure(config):
  for path in _OWN_CACHE:
    shutil.rmtree(path, ignore_errors=True)


# Rough cost of a test file in seconds (one worker, 2-core CPU, a fresh compilation cache).  With
# ``--dist loadfile --no-loadscope-reorder`` (setup.cfg) the workers take whole files in the
# collection order that ``pytest_collection_modifyitems`` sets below: longest first, so that the
# short files fill the gaps at the end instead of a long file starting last and running alone.
# A file not listed counts as FILE_COST_DEFAULT; list every file that takes longer.
FILE_COSTS = {
    "test_contract_supernets.py": 340, "test_run_search.py": 330, "test_faults.py": 260,
    "test_run_search_spaces.py": 240, "test_jobs_tunas.py": 260, "test_nn_ofa_mbv3.py": 40,
    "test_evaluate.py": 330, "test_train.py": 250, "test_io_ofa.py": 70, "test_readme.py": 40,
    "test_spaces_ofa_mbv3.py": 50, "test_export.py": 45, "test_spaces_ofa_resnet50.py": 40,
    "test_runtime.py": 50, "test_parallel.py": 400, "test_data_pipeline.py": 60,
    "test_data_formats.py": 190, "test_ofa_configs.py": 60, "test_configs.py": 40,
    "test_convert_deploy.py": 130, "test_lowering.py": 40, "test_data_synthetic.py": 40,
    "test_latency_tunas.py": 40,
}
FILE_COST_DEFAULT = 30


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true",
                   help="also run the tests marked slow (the whole suite; CI runs without them)")


def pytest_collection_modifyitems(session, config, items):
  items.sort(key=lambda item: -FILE_COSTS.get(item.path.name, FILE_COST_DEFAULT))  # stable
  if not config.getoption("--slow"):
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
      if "slow" in item.keywords:
        item.add_marker(skip)

from regnas_jax.nn import OFAMobileNetV3
from regnas_jax.nn.common import init_variables
from regnas_jax.spaces import OFAMobileNetV3Space


@pytest.fixture(scope="session")
def tiny():
  """(space, supernet, variables, images): width 0.5, small stem, 12 px, 10 classes, and two
  blocks per stage (depth choices 1 or 2): every elastic dimension, half the compile time of
  the full 20-block layout (the contract tests' configuration of this space, tests/contract.py,
  is the same)."""
  sp = OFAMobileNetV3Space(width_mult=0.5, stem="small", num_classes=10, resolutions=(12,),
                           depth_choices=(1, 2))
  net = OFAMobileNetV3(sp)
  v = init_variables(net, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (5, 12, 12, 3))
  return sp, net, v, x
