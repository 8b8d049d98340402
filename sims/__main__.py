"""`python -m sims run ...` / `python -m sims sweep ...`: see sims/cli.py and docs/simulations.md."""

import sys

from sims.cli import main

sys.exit(main())
