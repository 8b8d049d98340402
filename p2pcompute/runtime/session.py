"""Starting and stopping an embedded local peer for `init()` with no address."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from p2pcompute import config
from p2pcompute.errors import PeerUnavailableError
from p2pcompute.net.transport import make_address
from p2pcompute.ownership.store import create_store_dir


def new_id() -> str:
    return os.urandom(6).hex()


class EmbeddedPeer:
    """A peer daemon process private to this driver; it exits when the driver does."""

    def __init__(self, total: dict, start_timeout_s: float = 30.0, store_capacity: int | None = None):
        self.peer_id = new_id()
        # mkdtemp makes a 0700 directory: only this user can reach the sockets inside.
        self.session_dir = tempfile.mkdtemp(prefix="p2p-", dir=_short_tmp())
        self.store_dir = create_store_dir(f"p2p-{self.peer_id}", spill_dir=os.path.join(self.session_dir, "spill"))
        log_path = os.path.join(self.session_dir, "peer.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([config.package_root()] +
                                            [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        args = [sys.executable, "-m", "p2pcompute.runtime.daemon", "--peer-id", self.peer_id,
                "--session-dir", self.session_dir, "--store-dir", self.store_dir,
                "--resources", json.dumps(total), "--parent-pid", str(os.getpid())]
        if store_capacity:
            args += ["--store-capacity", str(int(store_capacity))]
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                         close_fds=True)
        self.log_path = log_path
        sock = os.path.join(self.session_dir, "peer")
        deadline = time.monotonic() + start_timeout_s
        delay = 0.002
        while not os.path.exists(sock):
            if self.proc.poll() is not None:
                tail = _tail(log_path)
                self.stop()
                raise PeerUnavailableError(f"the local peer failed to start (exit code {self.proc.returncode}):"
                                           f"\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise PeerUnavailableError(f"the local peer did not start within {start_timeout_s} s; "
                                           f"see {log_path}")
            time.sleep(delay)  # waiting on another process to bind: a bounded poll on a condition
            delay = min(delay * 2, 0.02)
        self.addr = make_address(None, f"ipc://{sock}")

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.store_dir, ignore_errors=True)
        shutil.rmtree(self.session_dir, ignore_errors=True)


def _short_tmp() -> str:
    """Unix socket paths are limited to ~107 bytes; keep the session directory short."""
    base = tempfile.gettempdir()
    return base if len(base) < 40 else "/tmp"


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
