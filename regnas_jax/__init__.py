"""regnas-jax: regression-free neural architecture search in JAX/Flax.

Layers (each imports only those below it in this list):

  spaces    architectures as small integer pytrees: sampling, variation, inclusion, costs, JSON
  nn        masked supernets over one parameter tree, exact-shape subnets, extraction
  costs     MACs and parameters counted off traced programs
  data      datasets (digits, CIFAR-10 packed JPEG, tfds) and the on-device batch pipeline
  evaluate  BN re-calibration and scoring of populations with one compiled call
  checkpoint, progress   orbax checkpoints with clear errors; progress bars, JSON-lines logs
  io        PyTorch checkpoints without torch; OFA's released supernets in and out (convert.py)
  train     supernet training: vmapped multi-subnet steps, sandwich rule, progressive shrinking
  pipeline  the job behind run_search.py
"""

from regnas_jax import costs, evaluate, nn, spaces

__version__ = "0.1.0"

__all__ = ["costs", "evaluate", "nn", "spaces"]
