"""The process-wide runtime handle, kept apart from api.py so every module can reach it without a cycle."""

from __future__ import annotations

from typing import Any

from p2pcompute.errors import NotInitializedError

STATE: dict[str, Any] = {"runtime": None, "peer": None, "ctx": None, "worker": False}


def runtime():
    rt = STATE["runtime"]
    if rt is None:
        raise NotInitializedError("p2pcompute is not initialized: call p2pcompute.init() first")
    return rt
