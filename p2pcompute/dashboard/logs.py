"""Log files of a peer's home: the peer's own log, one per worker, one per submitted job.

Logs stay where they are written (HOME/logs); nothing is shipped anywhere. `p2p logs` reads the local
peer's files, the dashboard serves its own peer's files, and a task's or actor's log is found by asking the
state API which worker ran it.
"""

from __future__ import annotations

import os
import sys
import time

MAX_READ_BYTES = 1 << 20


def files(log_dir: str) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(log_dir) if n.endswith(".log"))
    except OSError:
        return []
    return [os.path.join(log_dir, n) for n in names]


def safe_path(log_dir: str, name: str) -> str | None:
    """The path of log `name` in `log_dir`, or None: a name from a request is never a path."""
    if not isinstance(name, str) or "/" in name or name.startswith(".") or not name.endswith(".log"):
        return None
    path = os.path.join(log_dir, name)
    return path if os.path.isfile(path) else None


def select(log_dir: str, *, proc: str | None = None, task: str | None = None, actor: str | None = None,
           home: str | None = None) -> list[str]:
    if task or actor:
        from p2pcompute.dashboard.peer_link import PeerLink
        from p2pcompute.util import state
        link = PeerLink.to_home(home)
        try:
            if task:
                rows = state.list_tasks([("task_id", "=", task)], limit=1, source=link)
            else:
                rows = state.list_actors([("actor_id", "=", actor)], limit=1, source=link)
        finally:
            link.close()
        if not rows or not rows[0].get("worker_id"):
            raise ValueError(f"no worker known for {'task ' + task if task else 'actor ' + actor}")
        proc = rows[0]["worker_id"]
    out = files(log_dir)
    if proc:
        out = [p for p in out if proc in os.path.basename(p)]
        if not out:
            raise ValueError(f"no log file of {proc!r} in {log_dir} (logs live on the peer that ran the process; "
                             f"run `p2p logs` there)")
    return out


def tail(path: str, lines: int = 200, max_bytes: int = MAX_READ_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text else "")


def read_from(path: str, offset: int, max_bytes: int = MAX_READ_BYTES) -> tuple[str, int]:
    """Bytes from `offset` on (for following a log over HTTP): (text, next offset)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
    except OSError:
        return "", offset
    return data.decode(errors="replace"), offset + len(data)


def follow(paths: list[str], lines: int = 200, forever: bool = False, out=None) -> None:
    out = out or sys.stdout
    offsets = {}
    for p in paths:
        if len(paths) > 1:
            out.write(f"==> {os.path.basename(p)} <==\n")
        out.write(tail(p, lines))
        offsets[p] = os.path.getsize(p) if os.path.exists(p) else 0
    out.flush()
    while forever:
        time.sleep(0.5)  # following a file written by another process: poll it, as tail -F does
        for p in paths:
            text, offsets[p] = read_from(p, offsets[p])
            if text:
                out.write(text)
                out.flush()
