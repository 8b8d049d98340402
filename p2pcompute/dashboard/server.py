"""The dashboard: an HTTP server in a peer process, serving one page and the JSON behind it.

Theory of operation. `Dashboard.start()` binds a `ThreadingHTTPServer` (standard library only) to
127.0.0.1 unless told otherwise, on the asked port or the next free one, and serves from a daemon thread.
Each request is checked by `auth.Guard` before anything else, then answered from a `PeerLink` to the peer
it lives in: the same questions `p2p list` asks (the peer gathers from the whole cluster). The peer's loop
never runs HTTP code, and the dashboard never touches the peer's state directly.

Endpoints (GET unless said): `/` the page; `/api/cluster`, `/api/nodes`, `/api/jobs`, `/api/actors`,
`/api/tasks`, `/api/objects`, `/api/logs`, `/api/logs/<file>?offset=N`, `/api/timeline`, `/metrics`
(Prometheus; `?cluster=1` for every peer's series); `POST /api/login`; and, for jobs (always with the
token): `POST /api/packages/<sha256>`, `POST /api/jobs`, `GET /api/jobs/<id>`, `GET /api/jobs/<id>/logs`,
`POST /api/jobs/<id>/stop`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from p2pcompute.dashboard import auth

log = logging.getLogger("p2pcompute.dashboard")

DEFAULT_PORT = 8265
PORT_TRIES = 50
STATE_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 512 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a port another dashboard holds must look taken


class Dashboard:
    def __init__(self, *, peer_addr: str, sock_dir: str, log_dir: str, peer_id: str, token: str | None,
                 host: str = "127.0.0.1", port: int = DEFAULT_PORT, home: str | None = None,
                 jobs: bool = False):
        from p2pcompute.dashboard.peer_link import PeerLink
        self.peer_id = peer_id
        self.log_dir = log_dir
        self.host = host
        self.port = port
        self.guard = auth.Guard(token)
        self.link = PeerLink(peer_addr, sock_dir, "dash")
        self.httpd: _Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""
        self.jobs = None
        if jobs and home is not None:
            from p2pcompute.jobs.manager import JobManager
            self.jobs = JobManager(home=home, link=self.link, peer_id=peer_id)

    def start(self) -> str:
        last_error = None
        for port in range(self.port, self.port + PORT_TRIES) if self.port else [0]:
            try:
                self.httpd = _Server((self.host, port), _handler_for(self))
                break
            except OSError as exc:
                last_error = exc
        if self.httpd is None:
            raise OSError(f"no free port for the dashboard in {self.port}-{self.port + PORT_TRIES - 1} on "
                          f"{self.host}: {last_error}")
        self.port = self.httpd.server_address[1]
        shown = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        self.url = f"http://{shown}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                       name="p2p-dashboard", daemon=True)
        self.thread.start()
        if self.jobs is not None:
            self.jobs.start()
        log.info("dashboard at %s", self.url)
        return self.url

    def stop(self) -> None:
        if self.jobs is not None:
            self.jobs.stop()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        self.link.close()


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _handler_for(dash: Dashboard):
    from p2pcompute.dashboard import api

    class Handler(BaseHTTPRequestHandler):
        server_version = "p2pcompute-dashboard"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # keep the peer's log for what matters
            log.debug("%s %s", self.client_address[0], fmt % args)

        # ---- auth ------------------------------------------------------------------------------------

        def _credentials(self) -> tuple[str | None, str | None]:
            token = None
            authz = self.headers.get("Authorization")
            if authz and authz.lower().startswith("bearer "):
                token = authz[7:].strip()
            elif self.headers.get("X-P2P-Token") is not None:
                token = self.headers.get("X-P2P-Token").strip()
            session = None
            raw = self.headers.get("Cookie")
            if raw:
                try:
                    jar = cookies.SimpleCookie(raw)
                    if auth.SESSION_COOKIE in jar:
                        session = jar[auth.SESSION_COOKIE].value
                except cookies.CookieError:
                    session = ""
            return token, session

        def _check(self, write: bool, path: str = "") -> bool:
            token, session = self._credentials()
            d = dash.guard.decide(client_ip=self.client_address[0], host_header=self.headers.get("Host"),
                                  token=token, session=session, write=write)
            if not d.allowed and path == "/" and d.status == 401:
                # Refused, but a browser gets the (data-free) page, which asks for the token and logs in.
                from p2pcompute.dashboard.page import PAGE
                self._send(PAGE.encode(), 401, "text/html; charset=utf-8",
                           {"WWW-Authenticate": 'Bearer realm="p2pcompute"'})
                return False
            if not d.allowed:
                self._send_json({"error": d.reason}, d.status,
                                extra={"WWW-Authenticate": 'Bearer realm="p2pcompute"'} if d.status == 401 else None)
            return d.allowed

        # ---- plumbing --------------------------------------------------------------------------------

        def _send(self, body: bytes, status: int = 200, ctype: str = "application/json",
                  extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("X-Frame-Options", "DENY")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_json(self, obj, status: int = 200, extra: dict | None = None) -> None:
            self._send(json.dumps(obj, default=str).encode(), status, "application/json", extra)

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            if n < 0 or n > MAX_BODY_BYTES:
                raise HTTPError(413, f"body over {MAX_BODY_BYTES} bytes")
            return self.rfile.read(n) if n else b""

        def _route(self, method: str) -> None:
            url = urlparse(self.path)
            path = url.path.rstrip("/") or "/"
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if method == "POST" and path == "/api/login":
                    return self._login()
                write = method != "GET"
                if not self._check(write, path):
                    return
                result = api.handle(dash, method, path, query, self._body if method == "POST" else None)
                if isinstance(result, api.Raw):
                    self._send(result.body, result.status, result.content_type)
                else:
                    self._send_json(result)
            except HTTPError as exc:
                self._send_json({"error": str(exc)}, exc.status)
            except (ValueError, TypeError) as exc:
                self._send_json({"error": str(exc)}, 400)
            except Exception as exc:  # noqa: BLE001 - an HTTP thread must answer, never die silently
                log.exception("dashboard request %s %s failed", method, self.path)
                self._send_json({"error": f"{type(exc).__name__}: {exc}"}, 500)

        def _login(self) -> None:
            body = self._body()
            token = None
            try:
                data = json.loads(body or b"{}")
                token = data.get("token") if isinstance(data, dict) else None
            except ValueError:
                token = parse_qs(body.decode(errors="replace")).get("token", [None])[-1]
            presented, _ = self._credentials()
            token = token or presented
            if not isinstance(token, str) or not dash.guard.token_ok(token):
                self._send_json({"error": "wrong token"}, 401)
                return
            sid = dash.guard.sessions.new()
            cookie = f"{auth.SESSION_COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/; Max-Age={auth.SESSION_TTL_S}"
            self._send_json({"ok": True}, 200, {"Set-Cookie": cookie})

        def do_GET(self):
            self._route("GET")

        def do_HEAD(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_DELETE(self):
            self._route("POST")

        def do_PUT(self):
            self._route("POST")

    return Handler


def start_for_peer(peer, *, token: str | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                   home: str | None = None, jobs: bool = False) -> Dashboard:
    """Start a dashboard inside a running `PeerDaemon` (called before its loop starts). It is read-only
    unless `jobs` (`p2p start --enable-jobs`) turns job submission on."""
    dash = Dashboard(peer_addr=peer.addr, sock_dir=peer.session_dir, log_dir=peer.log_dir, peer_id=peer.peer_id,
                     token=token, host=host, port=port, home=home, jobs=jobs)
    dash.start()
    peer.dashboard = dash
    return dash
