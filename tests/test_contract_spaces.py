"""The search-space contract, for every registered space: JSON, validation, inclusion.

Parametrized over ``regnas_jax.spaces.SPACES``; each space's configuration comes from
``tests/contract.py`` (CONFIGS), so a new space is tested by registering it and adding its entry.
Nothing here compiles a network.

**Inclusion.**  REG-NAS reads ``contains(big, small)`` as "big holds every weight small uses".
The entries a subnet uses are defined through ``extract``, the supernet's own statement of
which weights make up a subnet: every entry of the supernet's parameters is replaced by a
distinct integer code, and the codes that appear in the extracted subnet's parameters are the
entries it uses.  That is literal only if ``extract`` slices (copies entries) and computes
nothing; two supernets compute in ``extract`` by design, and each config names the overrides
that make it slice:

* OFA's kernel transform derives a 3x3 / 5x5 kernel by matrices that every subnet with a
  smaller kernel shares (``kernel_transform=False``: plain centre crops).  With the transform,
  ``contains`` implies inclusion of the base weights only: ``test_nn_ofa_mbv3.py`` checks that
  with gradient support.
* SCARLET's ELS maps of skipped layers are folded into the next convolution (``els=False``: the
  skips zero-pad, and folding a zero-pad map is a row slice).  With the ELS, a skip uses its own
  map, which ``contains`` deliberately ignores (a skip of ``small`` is contained by anything).

The test checks that the extracted values are all codes (so the notion is literal), that
``contains(big, small)`` implies codes(small) <= codes(big) on random and grown pairs, that a
canonical form uses the same entries, and that per field, lowering every choice of the largest
arch to the smallest one makes ``contains`` false exactly when inclusion fails (a pair that
violates ``contains`` is detected; fields like the resolution change neither).  Index codes
rather than gradient support: no compile, no dead-ReLU or cancellation caveats, and "the same
entry" is exactly "the same code".
"""

import json
import re

import jax
import numpy as np
import pytest

import contract
from regnas_jax.spaces import InvalidArchError, SPACES, member, stack

NAMES = contract.NAMES


def test_every_registered_space_has_a_contract_config():
  missing = sorted(set(SPACES) - set(contract.CONFIGS))
  assert not missing, f"no entry in tests/contract.py CONFIGS for {missing}"


def _same(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


# -- JSON ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip(name):
  """Random archs -> JSON text -> the same (canonical) arch and the same JSON; populations
  too; ``format`` is one line."""
  sp, _ = contract.build(name)
  pop = contract.population(sp, 11)
  for i in range(len(pop[0])):
    a = sp.canonicalize(member(pop, i))
    j = sp.arch_to_dict(a)
    back = sp.arch_from_dict(json.loads(json.dumps(j)))
    assert _same(sp.canonicalize(back), a) and sp.arch_to_dict(back) == j
    assert j.get("space", name) == name
    text = sp.format(a)
    assert isinstance(text, str) and text and "\n" not in text
  objs = json.loads(json.dumps(sp.population_to_dicts(pop)))
  assert _same(sp.population_from_dicts(objs), jax.tree.map(np.asarray, sp.canonicalize(pop)))


def _entries(obj, keys=()):
  """``(keys, value)`` of every entry of a JSON value, containers before their contents."""
  items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
  for k, v in items:
    yield keys + (k,), v
    yield from _entries(v, keys + (k,))


def _path(keys) -> str:
  """An entry's name in the errors' notation, e.g. ``stages[2].kernel[1]``."""
  out = ""
  for k in keys:
    out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else k)
  return out


def _edit(obj, keys, value=None, delete=False):
  out = json.loads(json.dumps(obj))
  c = out
  for k in keys[:-1]:
    c = c[k]
  if delete:
    del c[keys[-1]]
  else:
    c[keys[-1]] = value
  return out


def _raises_naming(sp, obj, path):
  with pytest.raises(InvalidArchError) as e:
    sp.arch_from_dict(obj)
  msg = str(e.value)
  assert msg.startswith(path + ":"), (path, msg)
  assert "\n" not in msg


@pytest.mark.parametrize("name", NAMES)
def test_json_errors_name_the_entry(name):
  """Every bad value, missing key, unknown key and wrong list length is one
  :class:`InvalidArchError` line that starts with the entry's path."""
  sp, _ = contract.build(name)
  good = sp.arch_to_dict(sp.max_arch())
  for keys, value in [((), good)] + list(_entries(good)):
    path = _path(keys)
    if isinstance(value, dict):
      _raises_naming(sp, _edit(good, keys + ("bogus_key",), 1), _path(keys + ("bogus_key",)))
      continue
    if isinstance(value, list):           # one entry too few
      _raises_naming(sp, _edit(good, keys, value[:-1]), path)
      continue
    for bad in ("bogus", 12345, None):
      _raises_naming(sp, _edit(good, keys, bad), path)
    if isinstance(keys[-1], str):
      try:                                 # a missing key: an error naming it, or optional
        back = sp.arch_from_dict(_edit(good, keys, delete=True))
      except InvalidArchError as e:
        assert str(e).startswith(path + ":"), (path, str(e))
      else:
        assert _same(back, sp.max_arch()), f"{path}: removing it changed the arch"
  # a population names the member
  with pytest.raises(InvalidArchError, match=r"^\[1\]\.resolution: "):
    sp.population_from_dicts([good, _edit(good, ("resolution",), 12345)])


@pytest.mark.parametrize("name", NAMES)
def test_validate_errors_name_the_field(name):
  sp, _ = contract.build(name)
  a = jax.tree.map(np.asarray, sp.max_arch())
  d = a._asdict()
  with pytest.raises(InvalidArchError, match="unknown field 'bogus'"):
    sp.validate(dict(d, bogus=np.int32(0)))
  first = sp.fields()[0].name
  with pytest.raises(InvalidArchError, match=f"missing field '{first}'"):
    sp.validate({k: v for k, v in d.items() if k != first})
  pop = stack([a, a])
  for f in sp.fields():
    x = np.asarray(d[f.name])
    with pytest.raises(InvalidArchError, match=rf"^{f.name}: expected shape"):
      sp.validate(dict(d, **{f.name: np.zeros(f.shape + (3,), np.int32)}), population=False)
    with pytest.raises(InvalidArchError, match=rf"^{f.name}: choice indices must be integers"):
      sp.validate(dict(d, **{f.name: x + 0.5}))
    bad = x.copy()
    bad[(0,) * bad.ndim] = f.size
    where = f.name + (f"[{', '.join(['0'] * bad.ndim)}]" if bad.ndim else "")
    with pytest.raises(InvalidArchError,
                       match=rf"^{re.escape(where)}: choice index {f.size} not in 0..{f.size - 1}"):
      sp.validate(dict(d, **{f.name: bad}))
    bad_pop = np.asarray(getattr(pop, f.name)).copy()
    bad_pop[(1,) + (0,) * x.ndim] = -1
    with pytest.raises(InvalidArchError, match=rf"^{f.name}\[1.*\]: choice index -1"):
      sp.validate(pop._replace(**{f.name: bad_pop}))


# -- inclusion ----------------------------------------------------------------------------------
class Used:
  """Which supernet parameter entries an arch's exact subnet holds (module docstring)."""

  def __init__(self, name):
    self.sp, self.net = contract.build(name, literal=True)
    shapes = contract.shapes(name, literal=True)
    self.coded = contract.index_coded(shapes["params"])
    self.stats = jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes["batch_stats"])
    self.cache = {}

  def __call__(self, arch):
    key = b"".join(np.asarray(x).tobytes() for x in arch)
    if key not in self.cache:
      _, sv = self.net.extract({"params": self.coded.tree, "batch_stats": self.stats}, arch)
      used = contract.used_entries(self.coded, sv["params"])
      assert used is not None, ("extract computes values in this configuration: give it "
                                "literal overrides in tests/contract.py CONFIGS")
      self.cache[key] = used
    return self.cache[key]

  def included(self, big, small):
    return not np.any(self(small) & ~self(big))


@pytest.mark.parametrize("name", NAMES)
def test_contains_implies_literal_inclusion(name):
  used = Used(name)
  sp = used.sp
  pop, other = contract.population(sp, 7), contract.population(sp, 8)
  n = len(pop[0])
  verdicts = []
  for i in range(n):
    small = member(pop, i)
    grown = jax.tree.map(np.asarray, sp.grow_to_contain(member(other, i), small))
    assert sp.contains(grown, small)
    for big in (grown, member(other, i), member(pop, (i + 1) % n)):
      c = bool(sp.contains(big, small))
      inc = used.included(big, small)
      assert inc or not c, f"contains but not included: {sp.format(big)} / {sp.format(small)}"
      verdicts.append(inc)
    canon = jax.tree.map(np.asarray, sp.canonicalize(small))
    np.testing.assert_array_equal(used(canon), used(small))
  assert any(verdicts) and not all(verdicts)
  # Per field: the largest arch with that field at its smallest choices.
  mx = jax.tree.map(np.asarray, sp.max_arch())
  detected = 0
  for f in sp.fields():
    low = mx._replace(**{f.name: np.zeros_like(getattr(mx, f.name))})
    c, inc = bool(sp.contains(low, mx)), used.included(low, mx)
    assert c == inc, f"{f.name}: contains {c}, literal inclusion {inc}"
    detected += not c
  assert detected >= 1
