"""The README's library example runs as written, and its commands are the ones that work."""

import pathlib
import re
import shlex

import pytest
from absl import flags

from regnas_jax import cli
from regnas_jax.errors import ConfigError

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def shell_commands():
  """``(words, error)`` of every command in the README's ``bash`` blocks (continuation lines
  joined, comments dropped); ``error`` is the ``# error: ...`` line documented after it, or None."""
  out = []
  for block in re.findall(r"```bash\n(.*?)```", README, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      if line.startswith("# error: ") and out:
        out[-1] = (out[-1][0], line[len("# error: "):])
      elif shlex.split(line, comments=True):
        out.append((shlex.split(line, comments=True), None))
  return out


def test_readme_python_example_runs():
  blocks = re.findall(r"```python\n(.*?)```", README, re.S)
  assert blocks, "README has no python example"
  scope = {}
  exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own README
  assert scope["logits"].shape == (16, 8, 10)


def test_quick_start_installs_runs_and_tests_in_three_commands():
  quick = README.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
  words = [shlex.split(ln, comments=True) for ln in quick.splitlines()]
  assert words == [["pip", "install", "-e", ".[test]"], ["regnas-search"],
                   ["python", "-m", "pytest", "-q", "tests"]]


@pytest.mark.parametrize("words, error", [pytest.param(w, e, id=" ".join(w))
                                          for w, e in shell_commands() if w[0] == "regnas-search"])
def test_readme_command_lines_parse(words, error):
  """Each ``regnas-search`` example names flags, a config and config keys that exist; an error
  it documents is the one-line error of the command line, or a later one of the job."""
  try:
    cfg, workdir, stop_after = cli.parse(words, flags.FlagValues())
  except ConfigError as e:
    assert str(e) == error
  else:
    assert cfg.name and workdir and stop_after in cli.STAGES
