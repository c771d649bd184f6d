"""Experiments built on the jobs: :mod:`.regnas_tables` reproduces REG-NAS's tables on one
trained supernet (``python -m regnas_jax.experiments.regnas_tables --config ...``)."""
