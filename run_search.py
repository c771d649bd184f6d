#!/usr/bin/env python
"""regnas-jax command line from a source checkout: the same as the ``regnas-search`` command.

  python run_search.py --help
  python run_search.py --config digits_mbv3:smoke --workdir /tmp/run

See regnas_jax/cli.py.
"""

from regnas_jax import cli

if __name__ == "__main__":
  cli.main()
