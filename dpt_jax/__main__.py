"""`python -m dpt_jax`: the dpt-jax command."""

import sys

from .cli import main

sys.exit(main())
