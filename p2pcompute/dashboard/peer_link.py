"""A request/reply link to one local peer over its Unix socket, usable from any thread.

The dashboard's HTTP threads, the `p2p list ...` commands and the job supervisor are not client runtimes
(they own no objects, run no tasks): they only ask the peer questions. A `PeerLink` holds one socket and
serializes requests on a lock; a reply is matched by its request id, so a late answer to a request that
timed out is dropped instead of being taken for the next one's.
"""

from __future__ import annotations

import itertools
import os
import threading
import time

from p2pcompute.errors import PeerUnavailableError, TableError


class PeerLink:
    def __init__(self, peer_addr: str, sock_dir: str, name: str = "link"):
        from p2pcompute.net.transport import Context, Transport
        self.peer_addr = peer_addr
        self._ctx = Context()
        self._path = os.path.join(sock_dir, f"{name}{os.getpid()}-{os.urandom(3).hex()}")
        self._transport = Transport(self._ctx, f"{name}{os.getpid()}", "c", ipc_path=self._path)
        self.addr = self._transport.address
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._closed = False
        self.unanswered: list[str] = []

    @classmethod
    def to_home(cls, home_path: str | None, name: str = "cli") -> "PeerLink":
        from p2pcompute.runtime.home import Home
        state = Home(home_path).require_running()
        return cls(state["address"], state["run_dir"], name)

    def request(self, make, timeout_s: float = 10.0):
        """Send `make(reply_to, request_id)` to the peer and return its reply."""
        from p2pcompute.errors import RemoteProtocolError
        from p2pcompute.net import codec
        with self._lock:
            if self._closed:
                raise PeerUnavailableError("the link to the peer is closed")
            rid = f"lk{next(self._seq)}"
            self._transport.send(self.peer_addr, codec.encode(make(self.addr, rid)))
            deadline = time.monotonic() + timeout_s
            while True:
                left_ms = (deadline - time.monotonic()) * 1000
                if left_ms <= 0:
                    raise PeerUnavailableError(f"the peer at {self.peer_addr} did not answer within {timeout_s} s")
                frames, _, _ = self._transport.poll(min(left_ms, 200))
                for _sender, data in frames:
                    try:
                        reply = codec.decode(data)
                    except RemoteProtocolError:
                        continue
                    if getattr(reply, "request_id", None) == rid:
                        return reply

    # ---- the questions every user of a link asks ----------------------------------------------------

    def state(self, what: str, timeout_s: float, options: dict | None = None) -> list[dict]:
        from p2pcompute.runtime import messages as rm
        peers = self.request(lambda to, rid: rm.StateRequest(rid, to, what, True, options or {}), timeout_s).peers
        # Who did not answer in time: the answer is partial, and the commands say so.
        self.unanswered = sorted({p for r in peers for p in r.get("unanswered_peers", ())} |
                                 {p for r in peers for p in r.get("unanswered", ())})
        return peers

    def memory(self, timeout_s: float) -> list[dict]:
        from p2pcompute.runtime import messages as rm
        return self.request(lambda to, rid: rm.MemoryRequest(rid, to, True), timeout_s).peers

    def nodes(self, timeout_s: float) -> list[dict]:
        from p2pcompute.runtime import messages as rm
        return self.request(lambda to, rid: rm.NodesRequest(to, rid), timeout_s).nodes

    def status(self, timeout_s: float = 10.0) -> dict:
        from p2pcompute.runtime import messages as rm
        return self.request(lambda to, rid: rm.PeerStatusRequest(to, rid), timeout_s).status

    def table(self, op: tuple, timeout_s: float = 10.0, linearizable: bool = False):
        from p2pcompute.runtime import messages as rm
        reply = self.request(lambda to, rid: rm.TableOp(rid, op, linearizable, to), timeout_s)
        if not reply.ok:
            raise TableError(f"table operation {op[0]!r} failed: {reply.error}")
        return reply.result

    def jobs(self, timeout_s: float) -> list[dict]:
        return [record for _job_id, record in self.table(("job_list",), timeout_s) or []]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._transport.close()
            self._ctx.close()
            try:
                os.unlink(self._path)
            except OSError:
                pass
