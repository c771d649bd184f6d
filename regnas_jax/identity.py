"""The identity of a run's saved state: what it depends on, in one versioned form.

A checkpoint, a search state and an evaluation cache are saved with an *identity*: a JSON
object describing everything the saved arrays or scores depend on (space, supernet options,
training config without its operational keys, seed, data, ...).  A run that finds saved state
compares it with its own identity and refuses state of another run, naming the first
difference.  This module builds the four kinds of identity and is the one place where saved
identities are compared:

* ``supernet(...)``: supernet training (the checkpoint of ``training.train``);
* ``exact(...)``: one exact network trained from scratch (``training.train_exact``);
* ``tunas(...)``: TuNAS's alternating search (weights and policy in one checkpoint);
* ``search(...)``: a search over trained weights (its state files and evaluation caches); it
  holds the weights' *fingerprint* (the identity they were saved with, the step count and a
  hash of the arrays) and how subnets are scored.

Every identity carries ``"schema": "<kind>/<version>"`` and writes every setting it depends on,
defaults included.  :func:`difference` compares a saved identity with the current one after
:func:`upgrade` has brought it (and every identity nested in it, e.g. the search identity inside
a search state) to the current version.  Version 1 is the form without a ``schema`` key, which
left settings out at their default: ``upgrade`` writes those defaults in, so the work dirs of
version 1 resume unchanged.  A setting dropped from the project (:data:`RETIRED`) reads as
absent when it was off.
"""

from __future__ import annotations

import copy
from typing import Any

VERSION = 2
SCHEMA = "schema"
KINDS = ("supernet", "exact", "tunas", "search")

# Keys of ``config.train`` that do not change the trained weights (how often to log, save and
# report; how to re-calibrate BN before scoring, which the search identity records instead;
# ``switch``: the same gradients computed by ``lax.switch``).
OPERATIONAL_KEYS = ("log_every", "checkpoint_every", "max_to_keep", "calib_images",
                    "calib_batch_size", "progress_every", "max_nonfinite_steps", "switch")
# Keys of ``config.score`` that do not change a score (beyond float rounding).
SCORE_OPERATIONAL_KEYS = ("switch",)
# Keys of TuNAS's ``config.search`` that do not change the search state (the report's random
# baseline and retraining; ``shards`` is recorded as the resolved count).
TUNAS_OPERATIONAL_KEYS = ("random_samples", "random_tries", "retrain_steps", "shards")
# Settings dropped from the project (``envelopes``: static shape envelopes): a section with one
# of them off (falsy) equals the section without it; on, the state was made by another
# computation and is refused.
RETIRED = ("envelopes",)


def _section(d: dict, operational=()) -> dict:
  """A config section as an identity records it: without operational and retired-off keys."""
  return {k: v for k, v in d.items()
          if k not in operational and not (k in RETIRED and not v)}


def _data(cfg) -> dict:
  return _section(cfg.data.to_dict(), ("cache_dir", "download"))


def _versioned(kind: str, **fields) -> dict:
  return {SCHEMA: f"{kind}/{VERSION}", **fields}


def supernet(cfg, space, phases, *, init_from=None, augment: str = "pad_crop") -> dict:
  """What trained supernet weights depend on: space, supernet options, training config and
  phases, seed, data, the imported weights they started from (``init_from``: their identity,
  or None) and the input pipeline's augmentation (``config.input.augment``)."""
  return _versioned(
      "supernet", space=space.config(), supernet=cfg.supernet.to_dict(),
      train=_section(cfg.train.to_dict(), OPERATIONAL_KEYS),
      phases=[p.to_dict() for p in phases], seed=cfg.seed, data=_data(cfg),
      init_from=init_from, input={"augment": augment})


def exact(cfg, *, steps: int, seed: int, resolution: int, fd: dict | None,
          teacher_resolution: int | None, extra: dict | None = None) -> dict:
  """What an exact network trained from scratch depends on: the training config, steps, seed,
  input side, data, focal distillation (``fd``: its settings or None) with the old model's
  input side, and ``extra`` (e.g. the architecture, as ``{"arch": ...}``)."""
  out = _versioned(
      "exact", train=_section(cfg.train.to_dict(), OPERATIONAL_KEYS), steps=int(steps),
      seed=int(seed), resolution=int(resolution), data=_data(cfg), fd=fd,
      teacher_resolution=None if fd is None else int(teacher_resolution))
  clash = set(out) & set(extra or {})
  if clash:
    raise ValueError(f"identity extra: {sorted(clash)[0]!r} is a key of the identity itself")
  return {**out, **(extra or {})}


def tunas(cfg, space, *, shards: int, init_from=None) -> dict:
  """What TuNAS's search state (weights and policy) depends on; ``shards``: the architectures
  per step in effect."""
  search = _section(cfg.search.to_dict(), TUNAS_OPERATIONAL_KEYS)
  search["shards"] = int(shards)
  return _versioned(
      "tunas", space=space.config(), supernet=cfg.supernet.to_dict(),
      train=_section(cfg.train.to_dict(), OPERATIONAL_KEYS), search=search, seed=cfg.seed,
      data=_data(cfg), init_from=init_from)


def search(cfg, space, weights: str) -> dict:
  """What a search over trained weights depends on (its state files and evaluation caches):
  the weights' fingerprint, the space, the data and how subnets are scored."""
  return _versioned(
      "search", weights=weights, space=space.config(), data=_data(cfg),
      score=_section(cfg.score.to_dict(), SCORE_OPERATIONAL_KEYS),
      calib_images=cfg.train.calib_images, calib_batch_size=cfg.train.calib_batch_size)


# ----------------------------------------------------------------------------------------------
# Saved identities: the upgrade to the current version, the comparison
# ----------------------------------------------------------------------------------------------
def _from_v1(saved: dict, kind: str) -> dict:
  """A version-1 identity of ``kind`` in version 2's form: the settings version 1 left out
  at their default written in."""
  out = copy.deepcopy(saved)
  for sec in ("train", "score"):
    if isinstance(out.get(sec), dict):
      out[sec] = _section(out[sec])
  if kind == "supernet":
    out.setdefault("init_from", None)
    out.setdefault("input", {"augment": "pad_crop"})
  elif kind == "exact":
    fd = out.get("fd")
    out.setdefault("teacher_resolution", None if fd is None else out.get("resolution"))
  elif kind == "tunas" and isinstance(out.get("search"), dict):
    for k, default in (("rl_batch_size_multiplier", 0), ("scale_lr_by_batch", False),
                       ("shards", 1)):
      out["search"].setdefault(k, default)
  out[SCHEMA] = f"{kind}/2"
  return out


_UPGRADES = {1: _from_v1}   # version n -> n + 1


def _schema(x: dict) -> tuple[str | None, int]:
  """``(kind, version)`` of an identity; version 1 has no schema (its kind is unknown)."""
  s = x.get(SCHEMA)
  if s is None:
    return None, 1
  kind, _, version = str(s).partition("/")
  return kind, int(version) if version.isdigit() else -1


def upgrade(saved: Any, kind: str) -> Any:
  """``saved`` (an identity of ``kind``, of any earlier version) in the current version's form;
  an identity of another kind or of an unknown version is returned as it is (the comparison
  then names its schema)."""
  if not isinstance(saved, dict):
    return saved
  got, version = _schema(saved)
  if got not in (None, kind):
    return saved
  while version in _UPGRADES:
    saved = _UPGRADES[version](saved, kind)
    version += 1
  return saved


def migrate(saved: Any, current: Any) -> Any:
  """``saved`` with every identity in it (at any depth) upgraded to the version of its
  counterpart in ``current``."""
  if not (isinstance(saved, dict) and isinstance(current, dict)):
    return saved
  kind, _ = _schema(current)
  if kind in KINDS:
    saved = upgrade(saved, kind)
  return {k: migrate(v, current[k]) if k in current else v for k, v in saved.items()}


def difference(saved: Any, current: Any) -> str | None:
  """Where a saved identity differs from the current one (after :func:`migrate`), as one line
  naming the first differing key and both values; None when they are the same."""
  return first_difference(migrate(saved, current), current)


def first_difference(saved: Any, current: Any, where: str = "") -> str | None:
  """Path and values of the first difference between two JSON-like values, or None."""
  if isinstance(saved, dict) and isinstance(current, dict):
    for k in sorted(set(saved) | set(current)):
      if k not in saved or k not in current:
        return f"{where}{k}: saved {saved.get(k, '(absent)')!r}, now {current.get(k, '(absent)')!r}"
      d = first_difference(saved[k], current[k], f"{where}{k}.")
      if d:
        return d
    return None
  if isinstance(saved, (list, tuple)) and isinstance(current, (list, tuple)):
    if len(saved) == len(current):
      for i, (a, b) in enumerate(zip(saved, current)):
        d = first_difference(a, b, f"{where[:-1]}[{i}].")
        if d:
          return d
      return None
  if saved != current:
    return f"{where[:-1]}: saved {_short_repr(saved)}, now {_short_repr(current)}"
  return None


def _short_repr(v: Any, limit: int = 80) -> str:
  r = repr(v)
  return r if len(r) <= limit else r[:limit - 3] + "..."
