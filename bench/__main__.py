"""``python -m bench``: the load bench, bench/load.py."""

import sys

from bench.load import main

sys.exit(main())
