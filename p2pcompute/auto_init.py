"""Auto-init: the first call that needs a runtime, made without `init()`, starts the embedded default.

Ray does the same (`ray.get`, `ray.put`, `.remote()` all start a local instance when none exists), and Ray
code often relies on it. `P2P_AUTO_INIT=0` turns it off: the call then raises `NotInitializedError`.
"""

from __future__ import annotations

import logging
import os

from p2pcompute.errors import NotInitializedError
from p2pcompute.state import STATE

log = logging.getLogger("p2pcompute")

_OFF = ("0", "false", "no", "off")


def enabled() -> bool:
    return os.environ.get("P2P_AUTO_INIT", "1").strip().lower() not in _OFF


def runtime():
    """The process's runtime, starting the embedded default first if auto-init is on and none runs."""
    rt = STATE["runtime"]
    if rt is not None:
        return rt
    if not enabled():
        raise NotInitializedError("p2pcompute is not initialized: call p2pcompute.init() first "
                                  "(auto-init is off: P2P_AUTO_INIT=0)")
    from p2pcompute import api
    with api._lock:
        if STATE["runtime"] is None:
            info = api.init()
            log.info("started an embedded local peer (auto-init): %s", info["address"])
    return STATE["runtime"]
