"""The command line's flags and errors (``regnas_jax/cli.py``), the configs shipped in the package
and the light ``import regnas_jax``: nothing here runs a job, so nothing imports JAX in the
commands (the job itself is run by ``test_run_search.py``, from a built wheel)."""

import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest
from absl import flags

from regnas_jax import cli
from regnas_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = os.path.join(sysconfig.get_path("scripts"), "regnas-search")   # the console entry point


def command(*args, cwd):
  """``regnas-search ARGS`` as installed in this environment (``pip install -e .``)."""
  assert os.path.exists(COMMAND), f"{COMMAND} missing: install the package (pip install -e .)"
  return subprocess.run([COMMAND, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def parse(*args):
  """``cli.parse`` on its own flag registry (the process-wide one takes each flag once)."""
  return cli.parse(["regnas-search", *args], flags.FlagValues())


def load(name, variant=None):
  """A config file of ``configs/`` loaded directly, as ``get_config(variant)``."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


# -- help, flag files, resolution of --config ----------------------------------------------------
@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_help_lists_the_flags_and_exits_0(tmp_path, flag):
  out = command(flag, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  for name in ("--config", "--workdir", "--stop_after", "--flagfile", "digits_mbv3"):
    assert name in out.stdout, name
  assert "<train|search>" in out.stdout and out.stderr == ""
  assert ("--verbosity" in out.stdout) == (flag == "--helpfull")   # absl's own flags: full help
  assert not list(tmp_path.iterdir())


def test_import_and_help_do_not_import_jax():
  code = textwrap.dedent("""
      import sys
      import regnas_jax as rj
      from regnas_jax import cli
      assert rj.__version__ and 'jax' not in sys.modules
      try:
        cli.main(['regnas-search', '--help'])
      except SystemExit as e:
        assert e.code == 0, e.code
      assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))
      rj.export   # first use imports the subpackage (and JAX)
      assert 'jax' in sys.modules
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr


def test_flagfile_gives_config_overrides_and_workdir(tmp_path):
  ff = tmp_path / "run.flags"
  ff.write_text("--config=digits_tunas:v3,smoke\n--config.train.steps=5\n--workdir=/tmp/w\n"
                "--stop_after=train\n")
  cfg, workdir, stop_after = parse(f"--flagfile={ff}", "--config.search.beta=-0.25")
  expected = load("digits_tunas", "v3,smoke")
  expected.train.steps, expected.search.beta = 5, -0.25
  assert cfg.to_dict() == expected.to_dict()
  assert (workdir, stop_after) == ("/tmp/w", "train")


def test_config_by_name_path_and_default():
  cfg, workdir, stop_after = parse()
  assert cfg.to_dict() == load("digits_mbv3").to_dict()
  assert (workdir, stop_after) == (os.path.join("runs", "digits_mbv3"), "search")
  cfg, workdir, _ = parse("--config", "digits_scarlet:s2,smoke")
  assert cfg.to_dict() == load("digits_scarlet", "s2,smoke").to_dict()
  assert workdir == os.path.join("runs", "digits_scarlet_s2_smoke")
  cfg, _, _ = parse(f"--config={ROOT}/configs/cifar10_tunas.py:smoke")
  assert cfg.to_dict() == load("cifar10_tunas", "smoke").to_dict()
  assert set(cli.shipped_configs()) == {f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                                        if f.endswith(".py") and f != "__init__.py"}


def test_a_config_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
  (tmp_path / "digits_mbv3").write_text(textwrap.dedent("""
      import ml_collections
      def get_config(arg=None):
        return ml_collections.ConfigDict(dict(name='mine', arg=arg))
  """))
  monkeypatch.chdir(tmp_path)
  cfg, workdir, _ = parse("--config", "digits_mbv3:x")
  assert (cfg.name, cfg.arg, workdir) == ("mine", "x", os.path.join("runs", "mine"))


# -- bad input: one line, exit status 2, nothing written -----------------------------------------
BAD_CONFIGS = {
    "name_error.py": ("import ml_collections\ndef get_config(arg=None):\n"
                      "  c = ml_collections.ConfigDict()\n  c.name = undefined_name\n  return c\n",
                      "name_error.py: NameError: name 'undefined_name' is not defined "
                      "({path}, line 4)"),
    "import_error.py": ("from regnas_jax.defaults import no_such_piece\n",
                        "import_error.py: ImportError: cannot import name 'no_such_piece'"),
    "syntax_error.py": ("def get_config(arg=None)\n  return None\n",
                        "syntax_error.py: SyntaxError: expected ':' ({path}, line 1)"),
    "bad_variant.py": ("def get_config(arg=None):\n  raise ValueError(f'unknown variant {arg!r}')\n",
                       "bad_variant.py:huge: unknown variant 'huge'"),
    "plain_dict.py": ("def get_config(arg=None):\n  return {'name': 'x'}\n",
                      "plain_dict.py:huge: get_config() returned dict, not an "
                      "ml_collections.ConfigDict"),
    "no_function.py": ("name = 'x'\n", "no_function.py:huge: {path} defines no get_config()"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_a_config_file_that_fails_gives_one_line(tmp_path, name):
  source, message = BAD_CONFIGS[name]
  path = tmp_path / name
  path.write_text(source)
  arg = f"{path}:huge" if "huge" in message else str(path)
  with pytest.raises(ConfigError) as e:
    parse("--config", arg)
  assert "\n" not in str(e.value)
  assert str(e.value).startswith(f"--config={tmp_path}/")
  assert message.format(path=path) in str(e.value), str(e.value)


@pytest.mark.parametrize("args, message", [
    (["--config.train.stepz=5"], "--config.train.stepz: no such config key (did you mean steps?)"),
    (["--config", "digits_tunas", "--config.trian.steps=5"],
     "--config.trian.steps: no such config key 'trian' (did you mean train?)"),
    (["--config.nope=1"], "--config.nope: no such config key"),
    (["--config.search.population_size=x"], "invalid literal for int() with base 10: 'x'"),
    (["--config", "configs/missing.py"], "--config=configs/missing.py: no such file, nor a config "
                                         "shipped with regnas-jax (cifar10_mbv3, "),
    (["--config", "digits_mbv3:huge"], "--config=digits_mbv3:huge: digits_mbv3: unknown variant "
                                       "'huge' (known: smoke)"),
    (["--stop_after=test"], "flag --stop_after=test: value should be one of <train|search>"),
    (["--workdri=x"], "Unknown command line flag 'workdri'"),
    (["--flagfile=missing.flags"], "--flagfile: Unable to open flagfile"),
])
def test_bad_input_is_one_error_line_exit_2_nothing_written(tmp_path, args, message):
  out = command(*args, "--workdir", str(tmp_path / "work"), cwd=tmp_path)
  assert out.returncode == 2
  assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
  assert out.stderr.startswith("error: ") and message in out.stderr, out.stderr
  assert not list(tmp_path.iterdir())


def test_config_raising_name_error_from_the_command(tmp_path):
  """The error line of a config file that raises, as the command prints it."""
  (tmp_path / "broken.py").write_text("def get_config(arg=None):\n  return cfg\n")
  out = command("--config", "broken.py:smoke", cwd=tmp_path)
  assert out.returncode == 2 and out.stdout == ""
  assert out.stderr == (f"error: --config=broken.py:smoke: NameError: name 'cfg' is not defined "
                        f"(broken.py, line 2)\n")
  assert os.listdir(tmp_path) == ["broken.py"]


# -- the package: lazy subpackages ---------------------------------------------------------------
def test_package_attributes_import_on_first_use():
  code = textwrap.dedent("""
      import regnas_jax as rj
      mods = [rj.export, rj.search, rj.spaces, rj.nn, rj.evaluate, rj.costs]
      assert [m.__name__ for m in mods] == ['regnas_jax.' + n for n in
          ('export', 'search', 'spaces', 'nn', 'evaluate', 'costs')]
      assert callable(rj.export.load_subnet) and callable(rj.search.nsga2.ask)
      assert {'export', 'search', 'jobs'} <= set(dir(rj))
      try:
        rj.no_such_thing
      except AttributeError as e:
        assert 'no_such_thing' in str(e)
      else:
        raise AssertionError('rj.no_such_thing')
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
