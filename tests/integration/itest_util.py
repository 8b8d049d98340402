"""Helpers shared by the integration tests (kept out of conftest.py so test modules can import them)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import Callable

import psutil
import pytest

# ---- helpers --------------------------------------------------------------------------------------------


def wait_until(pred: Callable[[], object], timeout_s: float, interval_s: float = 0.01, what: str = "") -> object:
    """Poll `pred` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what or getattr(pred, '__name__', pred)}")
        time.sleep(interval_s)  # polling a condition owned by another process, bounded by the deadline


def descendants(pid: int | None = None) -> list[psutil.Process]:
    """Live (non-zombie) descendants of `pid` (default: this process)."""
    try:
        procs = psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in procs if _alive(p)]


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if _alive(psutil.Process(pid)):
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def run_driver(code: str, tmp_path, *, timeout_s: float = 60, name: str = "driver.py",
               check: bool = True) -> subprocess.CompletedProcess:
    """Run `code` as a driver script in a fresh interpreter and return its captured output.

    The script is a real file (so `__main__.__file__` exists, as in a user's script) in `tmp_path`.
    """
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env.pop("P2P_ADDRESS", None)
    env.pop("P2P_TOKEN", None)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    if check and proc.returncode != 0:
        pytest.fail(f"driver exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc
