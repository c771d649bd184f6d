"""Reading and writing weights of other frameworks: PyTorch checkpoints (``torch_state``, no
torch needed), OFA's supernets (``ofa``: conversion to and from our supernets' variables) and
ONNX models of JAX functions (``onnx``: a jaxpr translator, needs the ``onnx`` package)."""
