"""A short sweep in CI: a few dozen seeds of small clusters under every kind of fault, all clean.

Longer sweeps are documented in docs/simulations.md, not run here."""

from __future__ import annotations

import io
from dataclasses import replace

from sims.cli import SWEEP_DEFAULTS, sweep


def test_a_short_sweep_finds_nothing():
    out = io.StringIO()
    opts = replace(SWEEP_DEFAULTS, peers=10, seconds=8)
    failed = sweep(opts, seeds=24, first_seed=1000, jobs=2, out=out)
    assert not failed, out.getvalue()
    assert "24 seeds from 1000, 0 failed" in out.getvalue()
