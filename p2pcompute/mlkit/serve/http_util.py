"""HTTP requests as values that travel to replicas, and replica results as HTTP responses.

A replica runs in another process, so the proxy sends it a `Request`: a picklable snapshot of the method, path,
query, headers and the whole body, with Starlette's reading methods (`await request.json()`, `.body()`,
`.query_params`, `.headers`). A body that is not JSON raises `BadRequestError`, which the proxy answers with
400 and the message. The replica turns what the user returned into an HTTP head and body: dict/list/number ->
JSON, str -> text, bytes -> octet stream, a Starlette `Response` as it is, and a generator (or a
`StreamingResponse`) -> a stream the proxy pulls chunk by chunk.
"""

from __future__ import annotations

import inspect
import json
from typing import Any
from urllib.parse import parse_qsl

from p2pcompute.mlkit.serve.errors import BadRequestError


class Headers(dict):
    """Header names are case-insensitive: stored lower-case."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default=None):
        return super().get(key.lower(), default)

    def __contains__(self, key) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)


class Request:
    """What an ingress deployment's `__call__(self, request)` receives for an HTTP request."""

    def __init__(self, method: str, path: str, route_prefix: str, query_string: bytes,
                 headers: list[tuple[bytes, bytes]], body: bytes, client: tuple | None, scheme: str = "http",
                 server: tuple | None = None):
        self.method = method
        self.path = path
        self.route_prefix = route_prefix
        self.query_string = query_string
        self.raw_headers = headers
        self._body = body
        self.client = client
        self.scheme = scheme
        self.server = server

    @property
    def headers(self) -> Headers:
        return Headers((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in self.raw_headers)

    @property
    def query_params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True))

    @property
    def url(self) -> str:
        host = self.headers.get("host", "localhost")
        q = "?" + self.query_string.decode("latin-1") if self.query_string else ""
        return f"{self.scheme}://{host}{self.path}{q}"

    @property
    def route_path(self) -> str:
        """The path below the app's route prefix ("/" for the prefix itself)."""
        prefix = self.route_prefix.rstrip("/")
        rest = self.path[len(prefix):] if prefix and self.path.startswith(prefix) else self.path
        return rest or "/"

    async def body(self) -> bytes:
        return self._body

    async def json(self) -> Any:
        return parse_json(self._body)

    async def text(self) -> str:
        return self._body.decode("utf-8", errors="replace")

    def scope(self) -> dict:
        """An ASGI scope for this request (used to run a FastAPI/Starlette app inside the replica)."""
        return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": self.method,
                "scheme": self.scheme, "path": self.path, "raw_path": self.path.encode(),
                "root_path": self.route_prefix.rstrip("/"), "query_string": self.query_string,
                "headers": list(self.raw_headers), "client": self.client, "server": self.server}

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadRequestError("the request body is empty; send a JSON document (Content-Type: application/json)")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None


def _default(value):
    if hasattr(value, "tolist"):          # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"a {type(value).__name__} cannot be returned as JSON; return dict/list/str/bytes or a "
                    f"starlette Response")


def is_stream(value) -> bool:
    return inspect.isgenerator(value) or inspect.isasyncgen(value)


def to_http(value) -> tuple:
    """("http", status, headers, body) or ("stream", status, headers, iterator) for a user result."""
    cls_names = {c.__name__ for c in type(value).__mro__}
    if "StreamingResponse" in cls_names:
        return ("stream", value.status_code, _plain_headers(value.raw_headers), value.body_iterator)
    if "Response" in cls_names and hasattr(value, "body") and hasattr(value, "raw_headers"):
        return ("http", value.status_code, _plain_headers(value.raw_headers), bytes(value.body))
    if is_stream(value):
        return ("stream", 200, [(b"content-type", b"text/plain; charset=utf-8")], value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("http", 200, [(b"content-type", b"application/octet-stream")], bytes(value))
    if isinstance(value, str):
        return ("http", 200, [(b"content-type", b"text/plain; charset=utf-8")], value.encode())
    body = json.dumps(value, default=_default).encode()
    return ("http", 200, [(b"content-type", b"application/json")], body)


def _plain_headers(raw) -> list:
    return [(bytes(k), bytes(v)) for k, v in raw if bytes(k).lower() != b"content-length"]


def chunk_bytes(chunk) -> bytes:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    if isinstance(chunk, str):
        return chunk.encode()
    return json.dumps(chunk, default=_default).encode()


def error_status(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message for an error raised while serving a request."""
    src = getattr(exc, "cause", None) or exc
    status = getattr(src, "status_code", None) or getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 600:
        detail = getattr(src, "detail", None)
        return status, str(detail if detail is not None else _message(exc))
    return 500, f"Internal Server Error: {type(getattr(exc, 'cause', exc)).__name__}: {_message(exc)}"


def _message(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return str(cause if cause is not None else exc)
