"""python -m mim_jax.league: the method league (mim_jax/league/runner.py)."""

import sys

from mim_jax.league.runner import main

sys.exit(main())
