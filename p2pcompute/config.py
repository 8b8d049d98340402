"""Defaults and small helpers shared by the runtime and the command line."""

from __future__ import annotations

import os

import p2pcompute

# Values at or below this size travel inside messages; larger ones go to the shared-memory store.
INLINE_MAX_BYTES = 100 * 1024
DEFAULT_PORT = 7700


def package_root() -> str:
    """The directory holding the `p2pcompute` package, so child processes import the same code."""
    return os.path.dirname(os.path.dirname(os.path.abspath(p2pcompute.__file__)))


def default_home() -> str:
    return os.environ.get("P2P_HOME") or os.path.join(os.path.expanduser("~"), ".p2pcompute")
