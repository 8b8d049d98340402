"""The progress table and reporter, fed trial records directly (no cluster)."""

from __future__ import annotations

import io
import re

import pytest

from p2pcompute.mlkit.tune.progress import ProgressReporter, format_table
from p2pcompute.mlkit.tune.storage import Trial

pytestmark = pytest.mark.mlkit


def trials():
    a = Trial("t0", {"lr": 0.1, "model": {"depth": 3}}, status="RUNNING", iteration=4,
              last_result={"loss": 0.5}, best_score=-0.4)
    b = Trial("t1", {"lr": 0.01, "model": {"depth": 5}}, status="TERMINATED", iteration=10,
              last_result={"loss": 0.2}, best_score=-0.2)
    return [a, b]


def test_table_shows_status_config_latest_and_best_metric_and_iterations():
    text = format_table(trials(), "loss", "min", 12.0)
    lines = text.splitlines()
    assert "2 trials" in lines[0] and "1 RUNNING" in lines[0] and "1 TERMINATED" in lines[0]
    assert lines[1].split()[:4] == ["trial", "status", "lr", "model/depth"]
    row = next(line for line in lines if line.startswith("t0"))
    assert row.split()[:8] == ["t0", "RUNNING", "0.1", "3", "0.5", "0.4", "4", "0.0"]  # best shown in min mode
    assert lines.index(row) < lines.index(next(line for line in lines if line.startswith("t1")))  # running first


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_output_prints_a_line_per_status_change_only():
    out = io.StringIO()
    rep = ProgressReporter("loss", "min", verbose=1, stream=out)
    ts = trials()
    rep.update(ts)
    rep.update(ts)
    assert len(out.getvalue().splitlines()) == 2
    ts[0].status = "TERMINATED"
    rep.update(ts)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "t0 TERMINATED loss=0.5 iter=4" in lines[-1]


def test_terminal_output_redraws_in_place():
    out = FakeTerminal()
    rep = ProgressReporter("loss", "min", verbose=1, stream=out, refresh_s=0.0)
    rep.update(trials())
    first = out.getvalue()
    assert not re.match(r"\x1b\[\d+F", first)      # nothing to move back over yet
    rep.update(trials())
    redraw = out.getvalue()[len(first):]
    assert redraw.startswith(f"\x1b[{first.count(chr(10))}F")  # cursor back over the previous table


def test_silent_when_verbose_is_zero():
    out = io.StringIO()
    rep = ProgressReporter("loss", "min", verbose=0, stream=out)
    rep.update(trials())
    rep.summary(trials())
    assert out.getvalue() == ""
