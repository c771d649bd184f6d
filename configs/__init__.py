"""The configs shipped with regnas-jax, installed as ``regnas_jax.configs``.

Each file is an ml_collections config with ``get_config(variant)``; name it on the command line by
its file name, with a variant after a colon: ``regnas-search --config digits_tunas:smoke`` (a path
to any config file works too).  ``digits_*`` run offline on a CPU; ``cifar10_*`` are sized for an
accelerator and read the packed CIFAR-10 file at ``--config.data.path``; ``imagenet_*`` hold the
papers' ImageNet settings (tfds ``imagenet2012``): ``imagenet_ofa_mbv3`` (``:train`` trains the
supernet by OFA's progressive shrinking), ``imagenet_ofa_resnet50`` and ``imagenet_tunas``.  The sections that every
config on a dataset shares come from :mod:`regnas_jax.defaults`.
"""
