"""Who may use the dashboard: the rules, kept apart from HTTP so they read (and test) as a table.

Ray's dashboard and job API answered anyone who could reach the port; attackers ran code on exposed
clusters that way (ShadowRay, CVE-2023-48022). Here:

| request                                   | loopback client          | any other client          |
|-------------------------------------------|--------------------------|---------------------------|
| read (GET) with no credential             | allowed                  | refused (401)             |
| read with the right token or session      | allowed                  | allowed                   |
| anything with a wrong token or session    | refused (401)            | refused (401)             |
| job submission / stop / upload            | token or session needed  | token or session needed   |

A credential is the cluster token, in `Authorization: Bearer <token>` or `X-P2P-Token`, or a session
cookie that `POST /api/login` gives in exchange for the token (HttpOnly, SameSite=Strict, so another site
cannot ride on it). Loopback reads also require a loopback `Host` header, so a web page on another origin
cannot read the dashboard through DNS rebinding. A peer without a token (an embedded one) serves loopback
reads only.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass

SESSION_COOKIE = "p2p_session"
SESSION_TTL_S = 12 * 3600
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "::1"}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200
    reason: str = ""


def is_loopback(client_ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _host_is_local(host_header: str | None) -> bool:
    if not host_header:
        return True  # HTTP/1.0 clients send none; a browser always does
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host.split("]", 1)[0] + "]"
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return host in _LOCAL_HOSTS


class Sessions:
    def __init__(self):
        self._lock = threading.Lock()
        self._sessions: dict[str, float] = {}

    def new(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[sid] = time.monotonic() + SESSION_TTL_S
        return sid

    def valid(self, sid: str | None) -> bool:
        if not sid:
            return False
        with self._lock:
            expires = self._sessions.get(sid)
            if expires is None:
                return False
            if expires < time.monotonic():
                del self._sessions[sid]
                return False
            return True


class Guard:
    def __init__(self, token: str | None):
        self.token = token or None
        self.sessions = Sessions()

    def token_ok(self, presented: str) -> bool:
        return self.token is not None and hmac.compare_digest(presented.encode(), self.token.encode())

    def decide(self, *, client_ip: str, host_header: str | None, token: str | None, session: str | None,
               write: bool) -> Decision:
        if token is not None and not self.token_ok(token):
            return Decision(False, 401, "wrong token")
        if session is not None and token is None and not self.sessions.valid(session):
            return Decision(False, 401, "unknown or expired session; log in again with the cluster token")
        authenticated = token is not None or session is not None
        if write:
            if self.token is None:
                return Decision(False, 403, "job submission is disabled: this peer has no cluster token")
            if not authenticated:
                return Decision(False, 401, "job submission needs the cluster token (Authorization: Bearer ...)")
            return Decision(True)
        if authenticated:
            return Decision(True)
        if is_loopback(client_ip):
            if not _host_is_local(host_header):
                return Decision(False, 403, "a loopback request must name a loopback host (DNS rebinding guard)")
            return Decision(True)
        return Decision(False, 401, "requests from other machines need the cluster token "
                                    "(Authorization: Bearer <token>, or log in at /login)")
