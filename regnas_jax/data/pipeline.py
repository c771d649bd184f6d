"""The host input pipeline of training (``config.input``): batches by step, on ``grain``.

A training batch is a pure function of the step: batch ``s`` holds the examples
``data.epoch_batch_indices(n, batch_size, s, seed)`` (a per-epoch permutation), so a run that
resumes at step ``s`` reads exactly the batches an uninterrupted run would.  The pipeline keeps
that order and adds what a large dataset needs:

* **grain.** ``grain.MapDataset.range(start, total).map(BatchMaker)``: element ``s`` is the
  host's share of batch ``s``.  ``workers > 0`` runs the map (reading, JPEG decoding,
  augmentation) in that many worker processes (``mp_prefetch``), ``workers = 0`` in a background
  thread; ``prefetch`` batches are kept ready.  grain's iterator state (``get_state()``) is saved
  in the checkpoint beside the step and restored with ``set_state()``.
* **Per-host shards.** Process ``p`` of ``P`` takes rows ``[p B/P, (p+1) B/P)`` of each global
  batch: disjoint and covering, and the global batch (hence the trained weights) does not depend
  on ``P``.
* **Prefetch to the device.** ``put(host_batch) -> device arrays`` (default ``jax.device_put``;
  a sharded ``jax.make_array_from_process_local_data`` on a mesh) runs for the next batch in a
  thread while the current step computes.
* **Augmentation** (``config.input.augment``): ``'pad_crop'``: uint8 batches at the
  stored size, padded random crop + flip inside the jitted step (``data.preprocess``,
  ``config.train.augment``).  ``'inception'`` is OFA's and TuNAS's ImageNet training
  augmentation on the host: Inception random-resized crop (area 8-100 %, aspect ratio 3/4-4/3,
  10 tries then a centre crop), resized (bilinear) to the step's resolution, random horizontal
  flip; deterministic per ``(seed, step, position in the global batch)``.

``pipeline='memory'`` (what ``'auto'`` means unless workers, inception or on-demand decoding ask
for grain) is the simple path: the batch gathered from the in-memory split in one thread.  Both
give identical batches.  Of this section only ``augment`` changes the trained weights, so only
it enters the identity of a checkpoint (:func:`regnas_jax.identity.supernet`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
from typing import Any, Callable

import numpy as np

from regnas_jax import data as data_lib  # (the package this module is part of)
from regnas_jax.errors import DataError

PIPELINES = ("auto", "memory", "grain")
AUGMENTS = ("pad_crop", "inception")
DEFAULTS = dict(pipeline="auto", workers=0, prefetch=2, decode="once", augment="pad_crop")
INCEPTION_SCALE = (0.08, 1.0)
INCEPTION_RATIO = (3 / 4, 4 / 3)


def settings(cfg) -> dict:
  """``config.input`` as a checked dict (defaults for a config without the section)."""
  sec = cfg.get("input") if hasattr(cfg, "get") else None
  out = dict(DEFAULTS, **(sec.to_dict() if sec is not None else {}))
  if out["pipeline"] not in PIPELINES:
    raise DataError(f"config.input.pipeline: {out['pipeline']!r} is not one of {PIPELINES}")
  if out["augment"] not in AUGMENTS:
    raise DataError(f"config.input.augment: {out['augment']!r} is not one of {AUGMENTS}")
  if out["decode"] not in data_lib.DECODES:
    raise DataError(f"config.input.decode: {out['decode']!r} is not one of {data_lib.DECODES}")
  for k in ("workers", "prefetch"):
    if not (isinstance(out[k], int) and not isinstance(out[k], bool) and out[k] >= 0):
      raise DataError(f"config.input.{k}: must be an integer >= 0, got {out[k]!r}")
  return out


def uses_grain(cfg) -> bool:
  """Whether training batches come from the grain pipeline (``'auto'``: when workers, on-demand
  decoding or host-side augmentation ask for it; else the in-memory path)."""
  s = settings(cfg)
  if s["pipeline"] == "auto":
    return s["workers"] > 0 or s["decode"] != "once" or s["augment"] != "pad_crop"
  return s["pipeline"] == "grain"


def step_resolution(seed: int, resolutions, step: int) -> int:
  """The training resolution of ``step`` (uniform over ``resolutions``, a function of
  ``(seed, step)``)."""
  rng = np.random.default_rng([seed, 7, step])
  return resolutions[int(rng.integers(len(resolutions)))]


# ----------------------------------------------------------------------------------------------
# Inception-style augmentation (host, numpy + PIL)
# ----------------------------------------------------------------------------------------------
def inception_box(h: int, w: int, rng: np.random.Generator, scale=INCEPTION_SCALE,
                  ratio=INCEPTION_RATIO, tries: int = 10) -> tuple[int, int, int, int]:
  """``(top, left, height, width)`` of an Inception random-resized crop of an ``h x w`` image.

  Up to ``tries`` draws of an area fraction ``U(scale)`` and a log-uniform aspect ratio (width /
  height) in ``ratio``; the first box that fits is placed uniformly.  If none fits: the largest
  centred box whose aspect ratio is clipped into ``ratio`` (the torchvision fallback; TF's
  ``sample_distorted_bounding_box`` falls back to the whole image).
  """
  area = h * w
  lo, hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(tries):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(lo, hi))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def inception_crop(image: np.ndarray, resolution: int, rng: np.random.Generator,
                   flip: bool = True) -> np.ndarray:
  """uint8 ``(H, W, 3)`` -> uint8 ``(R, R, 3)``: random-resized crop (:func:`inception_box`),
  bilinear resize (PIL) to ``resolution``, then a horizontal flip with probability 1/2."""
  from PIL import Image

  top, left, ch, cw = inception_box(image.shape[0], image.shape[1], rng)
  crop = Image.fromarray(np.ascontiguousarray(image[top:top + ch, left:left + cw]))
  out = np.asarray(crop.resize((resolution, resolution), Image.BILINEAR), np.uint8)
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------------------------
# Batches by step
# ----------------------------------------------------------------------------------------------
def host_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """Rows of each global batch that process ``process_index`` of ``process_count`` reads."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(f"process {process_index} of {process_count}: not a valid host")
  if batch_size % process_count:
    raise DataError(f"config.train.batch_size: {batch_size} is not divisible by the "
                    f"{process_count} hosts")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


@dataclasses.dataclass(frozen=True)
class BatchMaker:
  """``step -> {'step', 'images', 'labels'}``: this host's share of global batch ``step``.

  ``images`` are uint8 ``(B / P, S, S, 3)`` at the stored size with ``augment='pad_crop'`` (the
  jitted step crops and flips), or ``(B / P, R, R, 3)`` at the step's resolution ``R`` with
  ``augment='inception'``.  Picklable (grain's worker processes run it).
  """
  source: Any
  batch_size: int
  seed: int
  augment: str = "pad_crop"
  resolutions: tuple = ()
  process_index: int = 0
  process_count: int = 1

  def indices(self, step: int) -> np.ndarray:
    rows = host_rows(self.batch_size, self.process_index, self.process_count)
    return data_lib.epoch_batch_indices(len(self.source), self.batch_size, step, self.seed)[rows]

  def __call__(self, step) -> dict:
    step = int(step)
    idx = self.indices(step)
    if self.augment == "pad_crop":
      images, labels = self.source.get(idx)
    else:
      r = step_resolution(self.seed, self.resolutions, step)
      first = host_rows(self.batch_size, self.process_index, self.process_count).start
      pairs = [self.source.raw(i) for i in idx]
      images = np.stack([
          inception_crop(img, r, np.random.default_rng([self.seed, 17, step, first + j]))
          for j, (img, _) in enumerate(pairs)])
      labels = np.asarray([lab for _, lab in pairs], np.int32)
    return {"step": np.int64(step), "images": images, "labels": labels}


def _grain():
  """grain, imported lazily (the in-memory default does not need it); absl flags, which grain
  reads, are marked parsed when no absl app parsed them (library use, tests)."""
  try:
    import grain
  except ImportError:
    raise DataError("config.input: the grain pipeline needs grain: pip install grain") from None
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain


class TrainBatches:
  """The batches of steps ``start .. total - 1`` from ``maker``, prefetched (module docstring).

  ``next()`` returns ``(step, put({'images', 'labels'}))`` for the next step; ``state()`` is
  ``{'start', 'grain'}`` -- grain's iterator state after the last batch returned (JSON-able) --
  and ``TrainBatches(..., state=that)`` continues after it.  ``close()`` stops the workers.
  """

  def __init__(self, maker: BatchMaker, start: int, total: int, *, workers: int = 0,
               prefetch: int = 2, put: Callable | None = None, state: dict | None = None):
    grain = _grain()
    self.start = int(state["start"]) if state is not None else int(start)
    self.total, self.put = int(total), put or (lambda b: b)
    ds = grain.MapDataset.range(self.start, self.total).map(maker)
    if workers:
      it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=workers, per_worker_buffer_size=max(1, -(-prefetch // workers))))
    else:
      it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0,
                                                   prefetch_buffer_size=prefetch))
    self._it = iter(it_ds)
    if state is not None:
      self._it.set_state(state["grain"])
    self._state = self._it.get_state()
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._next = self._pool.submit(self._pull)

  def _pull(self):
    try:
      b = dict(next(self._it))
    except StopIteration:
      return None
    step = int(b.pop("step"))
    st = self._it.get_state()
    return step, self.put(b), st

  def next(self) -> tuple[int, dict]:
    """``(step, batch)`` of the next step; ``StopIteration`` after step ``total - 1``."""
    got = self._next.result() if self._next is not None else None
    if got is None:
      self._next = None
      raise StopIteration
    step, batch, self._state = got
    self._next = self._pool.submit(self._pull)
    return step, batch

  __next__ = next

  def __iter__(self):
    return self

  def state(self) -> dict:
    return {"start": self.start, "grain": self._state}

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)
    close = getattr(self._it, "close", None)
    if close is not None:
      close()


def train_batches(cfg, dataset, start: int, total: int, *, resolutions=(), put=None,
                  state=None, process_index: int | None = None,
                  process_count: int | None = None) -> TrainBatches:
  """:class:`TrainBatches` of ``config.input`` / ``config.train`` over ``dataset.train``
  (``process_index`` / ``process_count`` default to JAX's)."""
  import jax

  s = settings(cfg)
  maker = BatchMaker(
      dataset.train, int(cfg.train.batch_size), int(cfg.seed), s["augment"], tuple(resolutions),
      jax.process_index() if process_index is None else process_index,
      jax.process_count() if process_count is None else process_count)
  return TrainBatches(maker, start, total, workers=s["workers"], prefetch=s["prefetch"], put=put,
                      state=state)
