"""The README's library example runs as written."""

import pathlib
import re


def test_readme_python_example_runs():
  text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "README has no python example"
  scope = {}
  exec(compile(blocks[0], "README.md", "exec"), scope)  # noqa: S102 - our own README
  assert scope["logits"].shape == (16, 8, 10)
