"""Input pipeline benchmark: grain throughput on the packed-JPEG CIFAR-10 file, and the peak host
memory of scoring its test split whole vs streamed in batches (as scoring reads it).

  python benchmarks/input_pipeline.py --path ../shared/data/cifar10/cifar10_jpeg.npz

Throughput: training batches (batch 64, JPEG decoding on demand) per second from
``data.pipeline.TrainBatches`` with 0 workers (a thread in this process: the baseline), 1 and 2
worker processes, for the default augmentation (decode only; the crop runs on the device) and the
host-side Inception crop at 32 px.  Memory: each case (2,500 or 10,000 test images at 32 px,
100-image batches) runs in a fresh process and reports the peak RSS over its life, every
program compiled beforehand on 500 validation images (``memory_case``).

  python benchmarks/input_pipeline.py --memory-only     # the memory table alone
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def throughput(path, workers, augment, batches, batch=64):
  from regnas_jax import data
  from regnas_jax.data import pipeline

  ds = data.load_cifar10_npz(path, 5000, decode="on_demand")
  maker = pipeline.BatchMaker(ds.train, batch, 0, augment, (32,))
  tb = pipeline.TrainBatches(maker, 0, batches + 2, workers=workers, prefetch=4)
  tb.next(), tb.next()   # workers started, first batches out
  t = time.perf_counter()
  for _ in range(batches):
    tb.next()
  secs = time.perf_counter() - t
  tb.close()
  return batches * batch / secs


def memory_case(path, n, mode, resolution=32, batch=100) -> dict:
  """Run in a child: score a 2-member population on ``n`` test images, whole or streamed.

  Every program is compiled and run first by a second Scorer on 500 validation images (the
  same shapes), so the measured call compiles nothing.  Reported: the process's peak RSS
  (``VmHWM``) over its whole life, and its RSS before the measured call.  (A peak *reset* before
  the call is not used: the allocator keeps or returns the warm-up's buffers unpredictably, so a
  difference against a reset peak measures the allocator, not the split.)
  """
  import jax

  from regnas_jax import data, evaluate
  from regnas_jax.nn import OFAMobileNetV3
  from regnas_jax.nn.common import init_variables
  from regnas_jax.spaces import OFAMobileNetV3Space
  import ml_collections

  sp = OFAMobileNetV3Space(width_mult=0.5, stem="small", num_classes=10,
                           resolutions=(resolution,))
  net = OFAMobileNetV3(sp)
  v = init_variables(net, jax.random.key(0))
  ds = data.load_cifar10_npz(path, 5000)

  def scorer(limit):
    score = ml_collections.ConfigDict(dict(block_size=2, chunk_size=1, batch_size=batch,
                                           max_images=limit))
    return evaluate.Scorer(net, sp, v, ds, score, calib_images=500, calib_batch_size=250, seed=0)

  pop = jax.tree.map(np.asarray, sp.sample(jax.random.key(1), 2))

  def whole(sc, split):   # the previous Scorer: the split preprocessed whole, kept on the device
    x, y = data.eval_images(sc.source(split), resolution, ds.mean, ds.std)
    x = jax.device_put(x)
    pred = evaluate.population_predictions(net, sc.variables["params"], sc.stats(pop), pop, x,
                                           block_size=2, chunk_size=1, batch_size=batch)
    return pred == y[None]

  score = whole if mode == "whole" else (lambda sc, split: sc.correct(pop, split))
  score(scorer(500), "val")   # compiles every program the measured call runs
  before = rss_mb()
  ok = score(scorer(n), "test")
  with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
  return {"n": n, "mode": mode, "before_mb": before, "peak_mb": peak, "ok": int(ok.sum())}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--path", default=os.environ.get(
      "REGNAS_CIFAR10_NPZ", "../shared/data/cifar10/cifar10_jpeg.npz"))
  p.add_argument("--batches", type=int, default=40)
  p.add_argument("--memory-case", nargs=2)
  p.add_argument("--memory-only", action="store_true")
  a = p.parse_args()
  if a.memory_case:
    print(json.dumps(memory_case(a.path, int(a.memory_case[0]), a.memory_case[1])))
    return
  if not a.memory_only:
    pipeline_table(a)
  memory_table(a)


def pipeline_table(a):
  print("| augmentation | workers | images/s | vs 0 workers |\n|---|---|---|---|")
  for augment in ("pad_crop", "inception"):
    base = None
    for w in (0, 1, 2):
      ips = throughput(a.path, w, augment, a.batches)
      base = base or ips
      print(f"| {augment} | {w} | {ips:,.0f} | {ips / base:.2f}x |", flush=True)


def memory_table(a):
  print("\n| scoring the test split | images | peak RSS (MB) | RSS before the call (MB) | "
        "peak vs whole, 2,500 | right answers (2 members) |\n|---|---|---|---|---|---|")
  ref = None
  for mode in ("whole", "streamed"):
    for n in (2500, 10000):
      out = subprocess.run([sys.executable, __file__, "--path", a.path, "--memory-case", str(n),
                            mode], capture_output=True, text=True, check=True)
      r = json.loads(out.stdout.strip().splitlines()[-1])
      ref = ref or r["peak_mb"]
      print(f"| {mode} | {n:,} | {r['peak_mb']:,.0f} | {r['before_mb']:,.0f} | "
            f"{r['peak_mb'] / ref:.2f}x | {r['ok']:,} |", flush=True)


if __name__ == "__main__":
  main()
