"""A bounded HTTP load generator on asyncio streams (no dependency): for tests, benchmarks and the example.

`run_load(url, ...)` opens `concurrency` keep-alive connections and sends requests until `total` are done or
`duration_s` has passed, then stops; it returns every request's status (0: connection error) and latency.
`rate_per_s` spaces request starts evenly (open loop) instead of sending as fast as answers come back.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    statuses: list[int] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    finished_at_s: list[float] = field(default_factory=list)   # since the start
    bodies: list[bytes] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> int:
        return sum(1 for s in self.statuses if s == 200)

    @property
    def failed(self) -> int:
        return len(self.statuses) - self.ok

    def rate_per_s(self) -> float:
        return len(self.statuses) / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, q: float) -> float:
        xs = sorted(self.latencies_s)
        if not xs:
            return float("nan")
        return 1000 * xs[min(len(xs) - 1, int(q / 100 * len(xs)))]

    def summary(self) -> str:
        return (f"{len(self.statuses)} requests in {self.elapsed_s:.2f} s = {self.rate_per_s():.0f}/s, "
                f"p50 {self.percentile_ms(50):.1f} ms, p99 {self.percentile_ms(99):.1f} ms, "
                f"failed {self.failed}")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length, chunked = None, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            parts.append(await reader.readexactly(size))
            await reader.readline()
        return status, b"".join(parts)
    return status, (await reader.readexactly(length) if length else b"")


async def request(url: str, body=None, method: str | None = None, headers: dict | None = None,
                  timeout_s: float = 30.0) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body)."""
    res = await run_load(url, body=body, total=1, concurrency=1, method=method, headers=headers,
                         timeout_s=timeout_s, keep_bodies=True)
    return res.statuses[0], res.bodies[0]


async def run_load(url: str, *, body=None, total: int | None = None, duration_s: float | None = None,
                   concurrency: int = 8, rate_per_s: float | None = None, method: str | None = None,
                   headers: dict | None = None, timeout_s: float = 30.0, keep_bodies: bool = False,
                   stop=None) -> LoadResult:
    """`stop`: a callable; the load ends early once it returns true."""
    if total is None and duration_s is None:
        raise ValueError("give total (requests) or duration_s: the load must be bounded")
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if body is not None and not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode()
    method = method or ("POST" if body is not None else "GET")
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}"
            + (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body is not None else "")
            + "\r\n").encode()
    payload = head + (bytes(body) if body is not None else b"")
    out = LoadResult()
    start = time.monotonic()
    issued = 0

    def take() -> float | None:
        """The time the next request may start, or None when the load is over."""
        nonlocal issued
        if total is not None and issued >= total:
            return None
        now = time.monotonic()
        if duration_s is not None and now - start >= duration_s:
            return None
        if stop is not None and stop():
            return None
        issued += 1
        return start + (issued - 1) / rate_per_s if rate_per_s else now

    async def worker():
        reader = writer = None
        while True:
            at = take()
            if at is None:
                break
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # open-loop pacing
            t0 = time.monotonic()
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
                writer.write(payload)
                status, data = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError,
                    IndexError):
                status, data = 0, b""
                if writer is not None:
                    writer.close()
                reader = writer = None
            t1 = time.monotonic()
            out.statuses.append(status)
            out.latencies_s.append(t1 - t0)
            out.finished_at_s.append(t1 - start)
            if keep_bodies:
                out.bodies.append(data)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    out.elapsed_s = time.monotonic() - start
    return out
