"""ZeroMQ transport — the only module that imports zmq.

Every endpoint is a ROUTER that receives and one DEALER per destination that sends. A DEALER's routing id is
`<process id>#<role>`, so a receiver knows which process a frame came from; that id is trusted because the
connection was authenticated (CURVE on TCP, a 0700 directory for IPC). Replies travel like any other
message, through the replier's own DEALER to the asker's ROUTER, so there is no request/reply lockstep.

Addresses are strings of space-separated parts, `tcp://H:P ipc:///path machine=M nonce=N`: a sender on
the same machine (and network namespace) uses the IPC path, others use TCP. "Same machine" is a guess from
`/etc/machine-id` and the network namespace, which containers started from one image on different hosts
can share; so it is confirmed before the IPC path is used: the receiver wrote its nonce `N` into a file
next to its socket (`<path>.nonce`), and a sender that reads the same nonce back through that path is on
the same machine. Otherwise it uses TCP.

Security: with a `CurveKeys`, the TCP ROUTER is a CURVE server and every DEALER a CURVE client, with keys
derived from the cluster token, and a ZAP handler admits only the token's client key. A connection with the
wrong token fails its handshake inside libzmq, before a single byte reaches our decoder (or the unpickler).
Frames larger than `max_message_bytes` are refused by libzmq (the connection is dropped) and, below that,
by our own check, which logs the sender.

Unroutable sends are reported, not dropped silently: each DEALER has a monitor, and a destination that does
not connect within `unreachable_after_ms` (or fails authentication) produces an `Unreachable` event with
the number of frames that were waiting; the runtime then treats that process as gone.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import struct
import time
from dataclasses import dataclass

import zmq
import zmq.auth
import zmq.utils.monitor
from zmq.auth.thread import ThreadAuthenticator

from p2pcompute.net.codec import MAX_MESSAGE_BYTES

log = logging.getLogger("p2pcompute.transport")

_MACHINE: str | None = None


def machine_id() -> str:
    """Same value for processes that can reach each other's IPC sockets: same host and network namespace."""
    global _MACHINE
    if _MACHINE is None:
        try:
            with open("/etc/machine-id") as f:
                base = f.read().strip()
        except OSError:
            import socket
            base = socket.gethostname()
        try:
            netns = str(os.stat("/proc/self/ns/net").st_ino)
        except OSError:
            netns = "0"
        _MACHINE = hashlib.blake2b(f"{base}/{netns}".encode(), digest_size=6).hexdigest()
    return _MACHINE


def make_address(tcp: str | None, ipc: str | None, nonce: str | None = None) -> str:
    parts = []
    if tcp:
        parts.append(tcp)
    if ipc:
        parts.append(ipc)
        parts.append(f"machine={machine_id()}")
        if nonce:
            parts.append(f"nonce={nonce}")
    return " ".join(parts)


def write_nonce(ipc_path: str) -> str | None:
    """Write a fresh nonce next to an IPC socket, for senders to confirm they reach the same filesystem."""
    nonce = secrets.token_hex(8)
    try:
        fd = os.open(ipc_path + ".nonce", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(nonce)
    except OSError:
        return None  # senders then trust the machine id alone, as before
    return nonce


_confirmed: dict[tuple[str, str], bool] = {}


def _local(ipc: str, nonce: str) -> bool:
    """Does the nonce file next to this IPC socket, read here, hold `nonce`? (Cached: it never changes.)"""
    key = (ipc, nonce)
    known = _confirmed.get(key)
    if known is None:
        try:
            with open(ipc[len("ipc://"):] + ".nonce") as f:
                known = f.read().strip() == nonce
        except OSError:
            known = False
        if not known:
            log.info("%s is on a machine with our machine id but not our filesystem: using TCP", ipc)
        if len(_confirmed) > 10_000:
            _confirmed.clear()
        _confirmed[key] = known
    return known


def route(address: str) -> str:
    """The endpoint to connect to for `address` from this process."""
    tcp = ipc = machine = nonce = None
    for part in address.split():
        if part.startswith("tcp://"):
            tcp = part
        elif part.startswith("ipc://"):
            ipc = part
        elif part.startswith("machine="):
            machine = part[8:]
        elif part.startswith("nonce="):
            nonce = part[6:]
    if ipc and machine == machine_id() and (nonce is None or tcp is None or _local(ipc, nonce)):
        return ipc
    if tcp:
        return tcp
    if ipc and machine is None:
        return ipc
    raise ValueError(f"address {address!r} has no endpoint reachable from this machine")


def tcp_part(address: str) -> str | None:
    for part in address.split():
        if part.startswith("tcp://"):
            return part
    return None


@dataclass(frozen=True)
class CurveKeys:
    """CURVE key pairs derived from the cluster token: same token, same keys, on every peer."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_token(cls, token: str) -> "CurveKeys":
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CURVE; install pyzmq from its wheels")
        server_secret = _z85_secret(token, b"server")
        client_secret = _z85_secret(token, b"client")
        return cls(zmq.curve_public(server_secret), server_secret, zmq.curve_public(client_secret), client_secret)


def _z85_secret(token: str, role: bytes) -> bytes:
    raw = hashlib.blake2b(token.encode(), key=b"p2pcompute-curve", person=role.ljust(16, b"\0")[:16],
                          digest_size=32).digest()
    return zmq.utils.z85.encode(raw)


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Event: `address` could not be reached (or refused us); `dropped` frames were waiting for it."""

    address: str
    dropped: int
    reason: str


class Waker:
    """Wake a poll loop from any thread: an eventfd the poller watches."""

    def __init__(self):
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._armed = False

    def wake(self) -> None:
        if not self._armed:
            self._armed = True
            try:
                os.eventfd_write(self.fd, 1)
            except OSError:
                pass

    def clear(self) -> None:
        # Consume first, then disarm: a wake() between the two is skipped, but its operation was queued
        # before it looked at the flag, so the drain that follows the clear sees it.
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        self._armed = False

    def rearm(self) -> None:
        """Forget that a wake is pending. Safe at any time (at worst the next wake writes once more), and it
        heals a wake() interrupted between its flag and its write (Ctrl-C), which would skip every later one."""
        self._armed = False

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


# A batch frame: this header (never a valid codec header: its first byte would be protocol version 255),
# then each message as a 4-byte big-endian length and its bytes.
_BATCH_HEADER = b"\xffB"
_LEN = struct.Struct(">I")
BATCH_ITEM_MAX = 16 << 10  # bigger messages go alone: batching saves per-message costs, not bandwidth
BATCH_MAX = 256  # messages held for one destination before they go anyway


def split_batch(frame: bytes) -> list[bytes] | None:
    """The messages of a batch frame, or None if it is malformed (the whole frame is then dropped)."""
    items = []
    view = memoryview(frame)
    pos, end = len(_BATCH_HEADER), len(frame)
    unpack = _LEN.unpack_from
    while pos < end:
        if pos + 4 > end:
            return None
        (length,) = unpack(view, pos)
        pos += 4
        if length == 0 or pos + length > end:
            return None
        items.append(frame[pos:pos + length])
        pos += length
    return items if len(items) >= 2 else None


_EVENTS = zmq.EVENTS
_RCVMORE = zmq.RCVMORE
_POLLIN = zmq.POLLIN
_CONNECT_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED if hasattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED") else zmq.EVENT_CONNECTED
_AUTH_FAIL = 0
for _name in ("EVENT_HANDSHAKE_FAILED_AUTH", "EVENT_HANDSHAKE_FAILED_PROTOCOL", "EVENT_HANDSHAKE_FAILED_NO_DETAIL"):
    _AUTH_FAIL |= getattr(zmq, _name, 0)


class _Out:
    __slots__ = ("sock", "monitor", "endpoint", "address", "connected", "since", "queued", "failed")

    def __init__(self, sock, monitor, endpoint: str, address: str, now: float):
        self.address = address
        self.sock = sock
        self.monitor = monitor
        self.endpoint = endpoint
        self.connected = False
        self.since = now
        self.queued = 0
        self.failed = ""


class Context:
    """A process's ZeroMQ context plus, when TCP is used, the ZAP authenticator thread."""

    def __init__(self, curve: CurveKeys | None = None, io_threads: int = 1):
        # Encryption runs in libzmq's I/O threads: a peer moving bulk data to several readers uses two.
        self.zmq = zmq.Context(io_threads=io_threads)
        self.curve = curve
        self._auth: ThreadAuthenticator | None = None
        if curve is not None:
            self._auth = ThreadAuthenticator(self.zmq, log=logging.getLogger("p2pcompute.auth"))
            self._auth.start()
            allowed = curve.client_public

            class _Keys:
                def callback(self, domain, key):
                    return key == allowed

            self._auth.configure_curve_callback(domain="*", credentials_provider=_Keys())

    def close(self) -> None:
        if self._auth is not None:
            try:
                self._auth.stop()
            except Exception:
                pass
            self._auth = None
        self.zmq.destroy(linger=0)


class Transport:
    """One thread's endpoint. Not thread-safe: use it from the thread that created it."""

    def __init__(self, context: Context, proc_id: str, role: str, *, ipc_path: str | None = None,
                 tcp_host: str | None = None, tcp_port: int = 0, advertise_host: str | None = None,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, unreachable_after_ms: int | None = None):
        self.ctx = context
        self.proc_id = proc_id
        self.identity = f"{proc_id}#{role}".encode()
        # Where to answer a peer we have not heard of yet: peers put their own address in their identity.
        self.reply_addr: dict[str, str] = {}
        self.max_message_bytes = max_message_bytes
        if unreachable_after_ms is None:  # the system config's (p2pcompute/config.py): 10 s unless set
            from p2pcompute.config import system_config
            unreachable_after_ms = system_config().transport.unreachable_after_ms
        self.unreachable_after_s = unreachable_after_ms / 1000
        # Keyed by the endpoint actually dialled: two spellings of one address (with or without the IPC
        # part) must share one DEALER, or the receiver sees one identity on two connections and drops one.
        self._outs: dict[str, _Out] = {}
        self._endpoint_of: dict[str, str] = {}
        self._monitors: dict = {}
        self._quiet: set = set()  # monitors of connections that are up: not in the poller (see _quieten)
        self._routers = []
        self._fds: set[int] = set()
        self.poller = zmq.Poller()
        self.dropped_oversize = 0
        self.rejected_frames = 0
        self._held: dict[str, list] | None = None  # destination -> messages held by `hold` until `flush`
        self.ipc_endpoint = None
        self.tcp_endpoint = None
        self._nonce = self._nonce_path = None
        if ipc_path is not None:
            router = self._router(curve=False)
            router.bind(f"ipc://{ipc_path}")
            try:
                os.chmod(ipc_path, 0o600)
            except OSError:
                pass
            self.ipc_endpoint = f"ipc://{ipc_path}"
            self._nonce_path = ipc_path + ".nonce"
            self._nonce = write_nonce(ipc_path)
        if tcp_host is not None:
            router = self._router(curve=context.curve is not None)
            if tcp_port:
                router.bind(f"tcp://{tcp_host}:{tcp_port}")
                port = tcp_port
            else:
                port = router.bind_to_random_port(f"tcp://{tcp_host}")
            self.tcp_endpoint = f"tcp://{advertise_host or tcp_host}:{port}"
        self.address = make_address(self.tcp_endpoint, self.ipc_endpoint, self._nonce)
        self._next_check = 0.0
        if role == "p" and self.tcp_endpoint:
            ident = f"{proc_id}#{role}#{self.tcp_endpoint}".encode()
            if len(ident) <= 255:
                self.identity = ident

    def _router(self, curve: bool):
        sock = self.ctx.zmq.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted process with the same id takes over
        if curve:
            keys = self.ctx.curve
            sock.curve_server = True
            sock.curve_secretkey = keys.server_secret
            sock.curve_publickey = keys.server_public
        self._routers.append(sock)
        self.poller.register(sock, zmq.POLLIN)
        return sock

    # ---- sending ------------------------------------------------------------------------------------

    def _endpoint(self, address: str) -> str:
        endpoint = self._endpoint_of.get(address)
        if endpoint is None:
            endpoint = self._endpoint_of[address] = route(address)
        return endpoint

    def _out(self, address: str) -> _Out:
        endpoint = self._endpoint_of.get(address) or self._endpoint(address)
        out = self._outs.get(endpoint)
        if out is not None:
            return out
        sock = self.ctx.zmq.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 5_000)  # back off up to 5 s between attempts
        if endpoint.startswith("tcp://"):
            keys = self.ctx.curve
            if keys is not None:
                sock.curve_serverkey = keys.server_public
                sock.curve_publickey = keys.client_public
                sock.curve_secretkey = keys.client_secret
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | _CONNECT_EVENTS | zmq.EVENT_DISCONNECTED |
                                          zmq.EVENT_CLOSED | _AUTH_FAIL)
        sock.connect(endpoint)
        out = _Out(sock, monitor, endpoint, address, time.monotonic())
        self._outs[endpoint] = out
        self._monitors[monitor] = endpoint
        self.poller.register(monitor, zmq.POLLIN)
        return out

    def send(self, address: str, data: bytes) -> None:
        held = self._held
        if held is not None:
            # Held per endpoint, not per address: two spellings of one address reach one process, and
            # their messages must keep their order.
            endpoint = self._endpoint_of.get(address) or self._endpoint(address)
            if len(data) <= BATCH_ITEM_MAX:
                items = held.get(endpoint)
                if items is None:
                    held[endpoint] = [address, data]
                else:
                    items.append(data)
                    if len(items) > BATCH_MAX:
                        self._flush_one(held.pop(endpoint))
                return
            items = held.pop(endpoint, None)
            if items:
                self._flush_one(items)  # what was held for it goes first: order is kept
        self._send_now(address, data)

    def _send_now(self, address: str, data: bytes) -> None:
        out = self._out(address)
        out.sock.send(data, copy=len(data) < 65536)
        if not out.connected:
            out.queued += 1

    def send_frames(self, address: str, frames: list) -> None:
        if self._held:
            items = self._held.pop(self._endpoint_of.get(address) or self._endpoint(address), None)
            if items:
                self._flush_one(items)
        out = self._out(address)
        out.sock.send_multipart(frames, copy=False)
        if not out.connected:
            out.queued += 1

    # ---- batching -----------------------------------------------------------------------------------
    # A loop that sends many small messages in one pass (a driver pushing a burst of tasks, a worker
    # answering a run of quick ones) holds them and sends each destination's as one frame when the pass
    # ends: one zmq send and one wake-up of the reader instead of one per message. Order per destination
    # is kept; a message too big to batch, or a bulk one, first flushes what was held for its destination.

    def hold(self) -> None:
        """Hold small messages until `flush`. Only the thread that owns this transport may call it."""
        if self._held is None:
            self._held = {}

    def holding(self) -> int:
        return sum(len(items) - 1 for items in self._held.values()) if self._held else 0

    def flush(self) -> None:
        held, self._held = self._held, None
        if held:
            for items in held.values():
                self._flush_one(items)

    def _flush_one(self, items: list) -> None:
        """Send [address, message, message, ...]: one message as itself, more as one batch frame."""
        address = items[0]
        if len(items) == 2:
            self._send_now(address, items[1])
            return
        parts = [_BATCH_HEADER]
        for item in items[1:]:
            parts.append(_LEN.pack(len(item)))
            parts.append(item)
        self._send_now(address, b"".join(parts))

    def forget(self, address: str) -> int:
        """Close the connection to a process known to be gone; returns how many frames were dropped."""
        try:
            endpoint = self._endpoint(address)
        except ValueError:
            return 0
        if self._held:
            self._held.pop(endpoint, None)
        out = self._outs.pop(endpoint, None)
        if out is None:
            return 0
        self._monitors.pop(out.monitor, None)
        if out.monitor in self._quiet:
            self._quiet.discard(out.monitor)
        else:
            try:
                self.poller.unregister(out.monitor)
            except KeyError:
                pass
        out.sock.disable_monitor()
        out.monitor.close(0)
        out.sock.close(0)
        return out.queued if not out.connected else 0

    def reconnect_now(self, address: str) -> bool:
        """A process has just appeared at `address`. If our connection there is down (it was made for a
        process that died at the same address, and ZeroMQ is backing off between attempts, up to
        RECONNECT_IVL_MAX), drop it, so the next send connects at once instead of after the backoff: else a
        peer restarted on a dead one's port stays unreachable for seconds and is suspected, even declared
        dead, for it. Returns whether a connection was dropped."""
        try:
            endpoint = self._endpoint(address)
        except ValueError:
            return False
        out = self._outs.get(endpoint)
        if out is None or out.connected:
            return False
        self.forget(address)
        return True

    def destinations(self) -> list[str]:
        return [out.address for out in self._outs.values()]

    # ---- receiving ----------------------------------------------------------------------------------

    def add_fd(self, fd: int) -> None:
        if fd not in self._fds:
            self._fds.add(fd)
            self.poller.register(fd, zmq.POLLIN)

    def remove_fd(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.discard(fd)
            self.poller.unregister(fd)

    def poll(self, timeout_ms: float | None, max_frames: int = 256):
        """Wait up to `timeout_ms` (None = forever). Returns (frames, ready_fds, events).

        frames: list of (sender_proc_id, payload bytes); events: Unreachable notices.
        """
        frames: list = []
        fds: list[int] = []
        events: list = []
        if timeout_ms is not None and 0 < timeout_ms < 1:
            # zmq truncates a timeout to whole milliseconds: the last millisecond before a deadline would be
            # spent in passes polling for 0 ms (two per sync task in a driver, measured). A deadline met up to
            # 1 ms late does no harm.
            timeout_ms = 1
        ready = self.poller.poll(timeout_ms)
        for sock, _ in ready:
            if isinstance(sock, int):
                fds.append(sock)
            elif sock in self._monitors:
                events += self._on_monitor(sock)
            else:
                self._drain(sock, frames, max_frames)
        if self._outs:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + 0.5
                for monitor in list(self._quiet):
                    if monitor.get(_EVENTS) & _POLLIN:
                        events += self._on_monitor(monitor)
                events += self._check_unreachable()
        return frames, fds, events

    def _drain(self, sock, frames: list, max_frames: int) -> None:
        recv = sock.recv
        get = sock.get
        for i in range(max_frames):
            # Ask before reading: a recv that raises zmq.Again costs more than the message itself. Not before
            # the first: the poll has just said there is one (and each question is a system call).
            if i and not get(_EVENTS) & _POLLIN:
                return
            try:
                ident = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not get(_RCVMORE):
                self.rejected_frames += 1
                continue
            payload = recv()
            if get(_RCVMORE):
                # A bulk frame follows: keep it in zmq's buffer rather than copy it into a bytes object.
                payload = [payload, recv(copy=False).buffer]
                while get(_RCVMORE):  # more frames than any message has: drain them, then reject
                    recv()
                    payload.append(b"")
            pieces = ident.split(b"#", 2)
            sender = pieces[0].decode("ascii", "replace")
            if len(pieces) == 3 and sender not in self.reply_addr:
                self.reply_addr[sender] = pieces[2].decode("ascii", "replace")
            if type(payload) is bytes and payload[:2] == _BATCH_HEADER:
                items = split_batch(payload)
                if items is None:
                    self.rejected_frames += 1
                    log.warning("dropped a malformed batch frame from %s", sender)
                    continue
                for item in items:
                    frames.append((sender, item))
                continue
            frames.append((sender, payload))

    def _on_monitor(self, monitor) -> list:
        address = self._monitors.get(monitor)
        events = []
        while True:
            try:
                evt = zmq.utils.monitor.recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                break
            out = self._outs.get(address) if address is not None else None
            if out is None:
                continue
            kind = evt["event"]
            if kind & (_CONNECT_EVENTS | zmq.EVENT_CONNECTED):
                if kind & _CONNECT_EVENTS or not out.endpoint.startswith("tcp://") or self.ctx.curve is None:
                    out.connected = True
                    out.queued = 0
                    out.failed = ""
                    self._quieten(monitor)
            elif kind & zmq.EVENT_DISCONNECTED:
                out.connected = False
                out.since = time.monotonic()
                self._watch(monitor)
            elif kind & _AUTH_FAIL:
                out.failed = "the peer refused our credentials: is the cluster token the same on both sides?"
                events.append(Unreachable(out.address, out.queued, out.failed))
        return events

    # A connection's monitor is polled with the sockets only until the connection is up: every socket in a
    # poll costs system calls on every pass, and once a connection is up its monitor has nothing urgent to
    # say (a disconnect only starts the `unreachable_after_ms` clock). Quiet monitors are read every 0.5 s.

    def _quieten(self, monitor) -> None:
        if monitor not in self._quiet:
            self._quiet.add(monitor)
            try:
                self.poller.unregister(monitor)
            except KeyError:
                pass

    def _watch(self, monitor) -> None:
        if monitor in self._quiet:
            self._quiet.discard(monitor)
            self.poller.register(monitor, zmq.POLLIN)

    def _check_unreachable(self) -> list:
        now = time.monotonic()
        events = []
        for out in list(self._outs.values()):
            if not out.connected and now - out.since > self.unreachable_after_s:
                events.append(Unreachable(out.address, out.queued, out.failed or
                                          f"no connection to {out.endpoint} for {now - out.since:.1f} s"))
                out.since = now  # report again only after another full interval
        return events

    def close(self, linger_ms: int = 0) -> None:
        """Close every socket. With `linger_ms`, frames still queued get that long to go out (a goodbye)."""
        for endpoint, out in list(self._outs.items()):
            if linger_ms:
                out.sock.setsockopt(zmq.LINGER, linger_ms)
            self._monitors.pop(out.monitor, None)
            out.sock.disable_monitor()
            out.monitor.close(0)
            out.sock.close()
        self._outs.clear()
        for sock in self._routers:
            sock.close(0)
        self._routers.clear()
        if self._nonce_path is not None:
            try:
                os.unlink(self._nonce_path)
            except OSError:
                pass
