"""Packaging: the metadata is in setup.cfg.  Here only what setup.cfg cannot say: the top-level
``configs/`` folder is shipped inside the package as ``regnas_jax.configs``, next to every
subpackage that ``find_packages`` finds."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["regnas_jax", "regnas_jax.*"]) + ["regnas_jax.configs"],
    package_dir={"regnas_jax.configs": "configs"},
)
