"""The package's code shape, read with ``ast``: no function over 80 lines, no call with eight or
more positional arguments (``functools.partial(f, ...)`` counts those after ``f``), and no
``getattr`` probe of a supernet in the layers that use them (``nn/``, ``evaluate.py``,
``training/``, ``jobs/``): the supernet contract (``nn.supernet.Supernet``) declares every
capability, so code reads the attribute.  Each failure names the places."""

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "regnas_jax"
MAX_LINES = 80
MAX_POSITIONAL = 7
# where a supernet is at hand, and the names it goes by there
SUPERNET_USERS = ("nn/", "evaluate.py", "training/", "jobs/")
SUPERNET_NAME = re.compile(r"\b(model|net|supernet|SUPERNETS)\b")


def long_functions(tree: ast.AST) -> list[tuple[int, str]]:
  """``(line, message)`` per function or method longer than ``MAX_LINES`` lines."""
  return [(n.lineno, f"{n.name} is {n.end_lineno - n.lineno + 1} lines")
          for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
          and n.end_lineno - n.lineno + 1 > MAX_LINES]


def _partial(call: ast.Call) -> bool:
  return ast.unparse(call.func) in ("functools.partial", "partial") and bool(call.args)


def _positional(call: ast.Call) -> int:
  return len(call.args) - _partial(call)   # a partial's first argument is the callee


def _callee(call: ast.Call) -> str:
  f = ast.unparse(call.func)
  return f"{f}({ast.unparse(call.args[0])}, ...)" if _partial(call) else f"{f}(...)"


def positional_calls(tree: ast.AST) -> list[tuple[int, str]]:
  """``(line, message)`` per call passing more than ``MAX_POSITIONAL`` positional arguments."""
  return [(n.lineno, f"{_callee(n)} with {_positional(n)} positional arguments")
          for n in ast.walk(tree)
          if isinstance(n, ast.Call) and _positional(n) > MAX_POSITIONAL]


def supernet_probes(tree: ast.AST) -> list[tuple[int, str]]:
  """``(line, message)`` per ``getattr(x, ...)`` whose ``x`` names a supernet."""
  return [(n.lineno, f"getattr({ast.unparse(n.args[0])}, ...)") for n in ast.walk(tree)
          if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "getattr"
          and n.args and SUPERNET_NAME.search(ast.unparse(n.args[0]))]


def _supernet_user(rel: str) -> bool:
  return any(rel == u or (u.endswith("/") and rel.startswith(u)) for u in SUPERNET_USERS)


def offences(root: pathlib.Path = PACKAGE) -> dict[str, list[str]]:
  """Every offence below ``root`` as ``'path:line: message'``, by check."""
  out = {"long functions": [], "positional calls": [], "supernet probes": []}
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(), str(path))
    checks = [("long functions", long_functions), ("positional calls", positional_calls)]
    if _supernet_user(rel):
      checks.append(("supernet probes", supernet_probes))
    for kind, check in checks:
      out[kind] += [f"regnas_jax/{rel}:{line}: {msg}" for line, msg in check(tree)]
  return out


@pytest.fixture(scope="module")
def found():
  return offences()


@pytest.mark.parametrize("kind", ["long functions", "positional calls", "supernet probes"])
def test_package_shape(found, kind):
  assert not found[kind], f"{kind}:\n" + "\n".join(found[kind])


PROBES = '  return getattr(model, "can_reorder", False), getattr(self.net, "x"), getattr(arch, "k")'
BAD = "\n".join([
    "import functools",
    "def long():", *["  x = 1"] * MAX_LINES,
    "def calls(model, f):",
    "  f(1, 2, 3, 4, 5, 6, 7, 8)",
    "  functools.partial(f, 1, 2, 3, 4, 5, 6, 7, 8)",
    "  functools.partial(f, 1, 2, 3, 4, 5, 6, 7)",
    "  f(1, 2, 3, 4, 5, 6, 7, key=8)",
    PROBES]) + "\n"


def test_the_checks_find_bad_code(tmp_path):
  """The checks fail on code that breaks each rule, naming the place, and on nothing else."""
  for rel in ("nn/bad.py", "search/bad.py"):
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(BAD)
  got = offences(tmp_path)
  assert got["long functions"] == [f"regnas_jax/{p}/bad.py:2: long is {MAX_LINES + 1} lines"
                                   for p in ("nn", "search")]
  assert [g.split(": ", 1)[1] for g in got["positional calls"]] == [
      "f(...) with 8 positional arguments",
      "functools.partial(f, ...) with 8 positional arguments"
  ] * 2
  line = BAD.splitlines().index(PROBES) + 1
  assert got["supernet probes"] == [f"regnas_jax/nn/bad.py:{line}: getattr(model, ...)",
                                    f"regnas_jax/nn/bad.py:{line}: getattr(self.net, ...)"]
