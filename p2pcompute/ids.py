"""Identifiers and what can be read from them.

- peer ids: 12 hex digits, random;
- process ids: `<peer id>-<kind><n>` (`-w3` a worker, `-d1a2b3c` a driver): the peer a process lived on is
  part of its name, so when a peer dies everyone knows which processes died with it;
- object ids: `<owner process id>.<n>`: the owner of an object is part of its name.
"""

from __future__ import annotations

import os


def new_peer_id() -> str:
    return os.urandom(6).hex()


def peer_of(proc_id: str) -> str:
    return proc_id.split("-", 1)[0]


def owner_of(object_id: str) -> str:
    return object_id.split(".", 1)[0]
