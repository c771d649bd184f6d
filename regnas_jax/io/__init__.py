"""Reading and writing weights of other frameworks: PyTorch checkpoints (``torch_state``, no
torch needed) and OFA's supernets (``ofa``: conversion to and from our supernets' variables)."""
