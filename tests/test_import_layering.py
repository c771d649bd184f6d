"""The package's layers import downward only, and no modules import each other in a cycle.

Every ``import`` of a ``regnas_jax`` module is read from the source (including imports inside
functions: a lazy import is still a dependency).  A module belongs to a *concern* -- its first
name below ``regnas_jax`` (``nn``, ``search``, ``persist``, ...) -- and each concern has a rank:
a module may import its own concern and any concern of a lower rank, never one of the same or a
higher rank.  The ranks are the layering of ``docs/architecture.md``:

  jobs -> search / training / scoring -> nn -> spaces -> errors
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "regnas_jax")

RANKS = {
    "errors": 0, "defaults": 0, "fs": 0, "identity": 0,
    "spaces": 1, "persist": 1, "stopping": 1, "progress": 1, "metrics": 1, "runtime": 1,
    "parallel": 1,
    "nn": 2, "data": 2, "latency": 2, "latency_tunas": 2, "checkpoint": 2,
    "evaluate": 3, "costs": 3, "training": 3, "search": 3, "export": 3, "io": 3,
    "report": 4, "convert": 4,
    "jobs": 5,
    "cli": 6, "configs": 6, "experiments": 7,
}


def modules() -> dict[str, str]:
  """``regnas_jax.x.y`` -> file path, for every module of the package."""
  out = {}
  for d, _, files in os.walk(PKG):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


def imports(name: str, path: str, known) -> set[str]:
  """The ``regnas_jax`` modules ``name`` imports (``from a import b`` counts ``a.b`` when it is
  a module, else ``a``)."""
  tree = ast.parse(open(path).read())
  pkg_parts = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      srcs = [a.name for a in node.names]
      subs = [[]] * len(srcs)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = pkg_parts[:len(pkg_parts) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      srcs, subs = [base], [[a.name for a in node.names]]
    else:
      continue
    for src, names in zip(srcs, subs):
      if not src.startswith("regnas_jax"):
        continue
      hit = [f"{src}.{n}" for n in names if f"{src}.{n}" in known]
      out.update(hit if hit else [src])
  out.discard(name)
  return {m for m in out if m in known}


def concern(name: str) -> str | None:
  parts = name.split(".")
  return parts[1] if len(parts) > 1 else None


def graph():
  mods = modules()
  return {m: imports(m, p, mods) for m, p in mods.items()}


def test_every_concern_has_a_rank():
  missing = sorted({concern(m) for m in modules()} - set(RANKS) - {None})
  assert not missing, f"give these parts of regnas_jax a rank in RANKS: {missing}"


def test_imports_go_downward():
  bad = []
  for m, deps in graph().items():
    c = concern(m)
    if c is None:        # regnas_jax/__init__.py: the package's public face imports anything
      continue
    for d in deps:
      cd = concern(d)
      if cd is not None and cd != c and RANKS[cd] >= RANKS[c]:
        bad.append(f"{m} (rank {RANKS[c]}) imports {d} (rank {RANKS[cd]})")
  assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
  g = {m: {d for d in deps if not modules_is_pkg_init(d)} for m, deps in graph().items()
       if not modules_is_pkg_init(m)}
  index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in g.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        cycles.append(sorted(comp))

  for v in sorted(g):
    if v not in index:
      visit(v)
  assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def modules_is_pkg_init(name: str) -> bool:
  return os.path.isdir(os.path.join(ROOT, *name.split(".")))


@pytest.mark.parametrize("src, want", [
    ("from regnas_jax.jobs import base\n", {"regnas_jax.jobs.base"}),
    ("from regnas_jax import persist\n", {"regnas_jax.persist"}),
    ("def f():\n  from regnas_jax.nn import supernet\n", {"regnas_jax.nn.supernet"}),
    ("from .. import errors\n", {"regnas_jax.errors"}),
])
def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path, src, want):
  f = tmp_path / "mod.py"
  f.write_text(src)
  assert imports("regnas_jax.search.mod", str(f), modules()) == want
