"""A peer's home directory: its token, its state file, its sockets and logs.

    HOME/token        the cluster token (0600)
    HOME/peer.json    written by the running peer: id, pid, addresses, directories
    HOME/run/         IPC sockets of the peer and its local processes (0700)
    HOME/logs/        the peer's log and one log per worker

Several peers can run on one machine with different homes (tests, demos). The store itself lives on tmpfs
(`/dev/shm/p2p-<peer id>`), named in peer.json.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile

from p2pcompute.config import default_home
from p2pcompute.errors import InvalidArgumentError, PeerUnavailableError


class Home:
    def __init__(self, path: str | None = None):
        self.path = os.path.abspath(os.path.expanduser(path or default_home()))

    @property
    def token_file(self) -> str:
        return os.path.join(self.path, "token")

    @property
    def state_file(self) -> str:
        return os.path.join(self.path, "peer.json")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.path, "run")

    @property
    def log_dir(self) -> str:
        return os.path.join(self.path, "logs")

    def create(self) -> None:
        for d in (self.path, self.run_dir, self.log_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        os.chmod(self.run_dir, 0o700)
        if len(os.path.join(self.run_dir, "x" * 24)) > 100:
            raise InvalidArgumentError(f"home {self.path} is too long a path for Unix sockets (keep it under ~70 "
                                       f"characters), e.g. use --home /tmp/p2p-home")

    # ---- token --------------------------------------------------------------------------------------

    def save_token(self, token: str) -> None:
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")

    def read_token(self) -> str | None:
        try:
            with open(self.token_file) as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None

    # ---- state --------------------------------------------------------------------------------------

    def write_state(self, state: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".peer.json.")
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.state_file)

    def read_state(self) -> dict | None:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def clear_state(self) -> None:
        try:
            os.unlink(self.state_file)
        except FileNotFoundError:
            pass

    def running(self) -> dict | None:
        """The state of the peer running from this home, or None if none is (a stale file is ignored)."""
        state = self.read_state()
        if not state:
            return None
        pid = state.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return None
        return state

    def require_running(self) -> dict:
        state = self.running()
        if state is None:
            raise PeerUnavailableError(f"no peer is running from {self.path}; start one with `p2p start` "
                                       f"(or `p2p join HOST:PORT --token-file F`), or pass --home")
        return state


def new_token() -> str:
    return secrets.token_urlsafe(32)


def read_token_arg(token: str | None, token_file: str | None) -> str | None:
    if token and token_file:
        raise InvalidArgumentError("give either --token or --token-file, not both")
    if token_file:
        try:
            with open(os.path.expanduser(token_file)) as f:
                value = f.read().strip()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        if not value:
            raise InvalidArgumentError(f"the token file {token_file} is empty")
        return value
    if token is not None and not token.strip():
        raise InvalidArgumentError("the token is empty")
    return token.strip() if token else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True
