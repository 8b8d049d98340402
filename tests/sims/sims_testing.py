"""Helpers for the simulator's tests: run the CLI in-process and read what it printed."""

from __future__ import annotations

import contextlib
import io
import re
import shlex

from sims.cli import main


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run `python -m sims ...` in this process; returns (exit status, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


def replay_argv(output: str) -> list[str]:
    """The arguments of the replay command a report printed (`run --peers ...`)."""
    match = re.search(r"replay: python -m sims (run .*)$", output, re.MULTILINE)
    assert match, f"no replay command in:\n{output}"
    return shlex.split(match.group(1))


def event_hash(output: str) -> str:
    match = re.search(r"^event log hash: ([0-9a-f]+)$", output, re.MULTILINE)
    assert match, f"no event log hash in:\n{output}"
    return match.group(1)


def failed_invariants(output: str) -> list[str]:
    return re.findall(r"^\s+FAIL (\w+)", output, re.MULTILINE)
