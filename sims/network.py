"""The simulated network: latency, loss, duplication, reordering and partitions, all drawn from one seed.

Theory of operation
-------------------
Every process in the simulation is an `Endpoint` registered under its address; `send` resolves the address
when the message leaves and schedules its delivery on the engine. What happens to a message depends on
whether its protocol is built for a lossy network:

- *Datagram* traffic — membership (type codes 1-99) and the replicated table (300-399), both designed to
  tolerate an unreliable network — suffers the `loss`, `dup` and `reorder` faults, each message with its own
  latency draw (so jitter alone may reorder two of them), and is dropped while a partition cuts its link.
- *Stream* traffic — everything else: leases, tasks, references — rides ZeroMQ over TCP in the runtime:
  FIFO per pair of processes, never duplicated. A `loss` there costs a retransmission delay (`rto`), and a
  message sent across a partition waits and arrives after the partition heals (TCP retries; ZeroMQ queues).
  `--unreliable-streams` applies the datagram faults to stream traffic too, to see what the cores do when
  the transport breaks its promise (expect hung tasks: nothing above the transport retransmits a push).

A message to a dead process is dropped (connection refused or reset); one already on the wire when its
sender crashes still arrives. A message to a paused peer waits in its backlog until it resumes (the kernel
buffers it). Messages between processes of the same peer take `local_ns` and suffer no faults.

Latency of a link = a draw from `--latency` x a fixed per-link factor in [0.5, 1.5) (derived from the two
peers' slots, so some links are always slower) + `zone_latency` when the peers are in different zones.

Sizes: with `--codec` every message is encoded at send and decoded at delivery (catching anything the real
codec cannot carry) and bytes are exact; otherwise one message in 32 of each type is encoded and the mean
size per type, times the count, estimates the bytes moved.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcompute.net import codec
from sims.engine import Engine

_SAMPLE_EVERY = 32
_MAX_CODE = 1024


class Endpoint:
    """A process reachable at `addr`. `handle(src_addr, msg)` is called for each delivered message."""

    __slots__ = ("idx", "addr", "node", "alive", "handle")

    def __init__(self, idx: int, addr: str, node, handle) -> None:
        self.idx = idx
        self.addr = addr
        self.node = node  # the SimPeer that hosts this process: its slot, zone, pause state
        self.alive = True
        self.handle = handle


@dataclass
class Partition:
    """Cuts the links between `group` (peer slots) and everyone else: both ways, only into the group
    (`in`), or only out of it (`out`), until `end_ns`."""

    group: frozenset
    mode: str  # "both" | "in" | "out"
    start_ns: int
    end_ns: int

    def blocks(self, src_slot: int, dst_slot: int) -> bool:
        s_in, d_in = src_slot in self.group, dst_slot in self.group
        if s_in == d_in:
            return False
        return self.mode == "both" or (self.mode == "in" and d_in) or (self.mode == "out" and s_in)


class Network:
    def __init__(self, engine: Engine, *, latency, zones: int, zone_latency_ns: int, loss: float, dup: float,
                 reorder: float, reorder_by_ns: int, rto_ns: int, use_codec: bool, unreliable_streams: bool,
                 on_violation) -> None:
        self.engine = engine
        self.rng = engine.derive_rng()
        self._latency = latency.sampler(self.rng)
        self.zones = zones
        self.zone_latency_ns = zone_latency_ns
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.reorder_by_ns, self.rto_ns = reorder_by_ns, rto_ns
        self.use_codec = use_codec
        self.unreliable_streams = unreliable_streams
        self.local_ns = 20_000
        self.on_violation = on_violation
        self.endpoints: dict[str, Endpoint] = {}
        self.partitions: list[Partition] = []
        self._next_idx = 0
        self._fifo: dict[int, int] = {}  # (src idx << 32 | dst idx) -> last delivery time, stream traffic
        self._fifo_pruned_ns = 0
        # Per type code: messages sent, and sampled (count, bytes) to estimate sizes.
        self.sent_by_code = [0] * _MAX_CODE
        self._sampled_n = [0] * _MAX_CODE
        self._sampled_bytes = [0] * _MAX_CODE
        self.exact_bytes = 0
        self.dropped = {"loss": 0, "partition": 0, "dead": 0, "no_route": 0, "unencodable": 0}
        self.duplicated = 0
        self.delayed_by_partition = 0

    # ---- endpoints ----------------------------------------------------------------------------------

    def register(self, addr: str, node, handle) -> Endpoint:
        self._next_idx += 1
        ep = Endpoint(self._next_idx, addr, node, handle)
        self.endpoints[addr] = ep
        return ep

    def unregister(self, ep: Endpoint) -> None:
        ep.alive = False
        if self.endpoints.get(ep.addr) is ep:
            del self.endpoints[ep.addr]

    # ---- sending ------------------------------------------------------------------------------------

    def send(self, src: Endpoint, to: str, msg) -> None:
        code = msg.TYPE
        n = self.sent_by_code[code] = self.sent_by_code[code] + 1
        frame = None
        if self.use_codec:
            frame = self._encode(msg)
            if frame is None:
                return
            self.exact_bytes += len(frame)
        elif n % _SAMPLE_EVERY == 1:
            data = self._encode(msg)
            if data is None:
                return
            self._sampled_n[code] += 1
            self._sampled_bytes[code] += len(data)
        dst = self.endpoints.get(to)
        if dst is None:
            self.dropped["no_route"] += 1
            return
        engine = self.engine
        snode, dnode = src.node, dst.node
        pkt = (src.addr, msg, frame, src.idx)
        if snode is dnode:
            engine.at(engine.now + self.local_ns, self._deliver, dst, pkt)
            return
        rng = self.rng
        datagram = code < 100 or 300 <= code < 400 or self.unreliable_streams
        delay = self._link_delay(snode.slot, dnode.slot)
        if datagram:
            if self.loss and rng.random() < self.loss:
                self.dropped["loss"] += 1
                return
            if self.partitions and self._blocked_until(snode.slot, dnode.slot):
                self.dropped["partition"] += 1
                return
            at = engine.now + delay
            if self.reorder and rng.random() < self.reorder:
                at += int(rng.random() * self.reorder_by_ns)
            engine.at(at, self._deliver, dst, pkt)
            if self.dup and rng.random() < self.dup:
                self.duplicated += 1
                engine.at(at + self._link_delay(snode.slot, dnode.slot) // 2, self._deliver, dst, pkt)
            return
        at = engine.now + delay
        if self.loss and rng.random() < self.loss:
            at += self.rto_ns
        if self.partitions:
            end = self._blocked_until(snode.slot, dnode.slot)
            if end:
                self.delayed_by_partition += 1
                at = max(at, end + delay)
        key = src.idx << 32 | dst.idx
        fifo = self._fifo
        last = fifo.get(key, 0)
        if at <= last:
            at = last + 1
        fifo[key] = at
        engine.at(at, self._deliver, dst, pkt)
        if engine.now - self._fifo_pruned_ns > 5_000_000_000:
            self._prune_fifo()

    def _encode(self, msg) -> bytes | None:
        try:
            return codec.encode(msg)
        except Exception as exc:  # noqa: BLE001 - anything the codec refuses is the sender's bug
            self.dropped["unencodable"] += 1
            self.on_violation("encodable", f"{type(msg).__name__} cannot be encoded: {type(exc).__name__}: {exc}")
            return None

    def _link_delay(self, a: int, b: int) -> int:
        lo, hi = (a, b) if a < b else (b, a)
        factor = 0.5 + (((lo * 0x9E3779B1) ^ (hi * 0x85EBCA77)) & 1023) / 1024
        delay = int(self._latency() * factor)
        if self.zones > 1 and a % self.zones != b % self.zones:
            delay += self.zone_latency_ns
        return delay + 1

    def _blocked_until(self, src_slot: int, dst_slot: int) -> int:
        """The end of the longest partition now cutting src -> dst, or 0 when none does."""
        end = 0
        now = self.engine.now
        for p in self.partitions:
            if p.end_ns > now and p.blocks(src_slot, dst_slot) and p.end_ns > end:
                end = p.end_ns
        return end

    def _prune_fifo(self) -> None:
        now = self.engine.now
        self._fifo = {k: v for k, v in self._fifo.items() if v > now}
        self._fifo_pruned_ns = now

    # ---- delivery -----------------------------------------------------------------------------------

    def _deliver(self, dst: Endpoint, pkt: tuple) -> None:
        if not dst.alive:
            self.dropped["dead"] += 1
            return
        node = dst.node
        if node.paused:
            node.backlog.append((self._deliver, dst, pkt))
            return
        src_addr, msg, frame, src_idx = pkt
        if frame is not None:
            msg = codec.decode(frame)
        self.engine.log.add(self.engine.now, msg.TYPE, src_idx, dst.idx)
        dst.handle(src_addr, msg)

    # ---- partitions ---------------------------------------------------------------------------------

    def add_partition(self, p: Partition) -> None:
        self.partitions.append(p)

    def heal(self, p: Partition | None = None) -> None:
        """End one partition (or all). Stream messages held by it were scheduled for its planned end; a
        partition ended early releases them no sooner — they are already on their way."""
        now = self.engine.now
        if p is None:
            for q in self.partitions:
                q.end_ns = min(q.end_ns, now)
            self.partitions = []
        else:
            p.end_ns = min(p.end_ns, now)
            self.partitions = [q for q in self.partitions if q is not p]

    def expire_partitions(self) -> None:
        now = self.engine.now
        if any(p.end_ns <= now for p in self.partitions):
            self.partitions = [p for p in self.partitions if p.end_ns > now]

    # ---- accounting ---------------------------------------------------------------------------------

    def messages_sent(self) -> int:
        return sum(self.sent_by_code)

    def membership_messages(self) -> int:
        return sum(self.sent_by_code[:100])

    def bytes_sent(self) -> tuple[int, bool]:
        """(bytes, exact): exact with --codec, else estimated from the sampled sizes."""
        if self.use_codec:
            return self.exact_bytes, True
        total = 0.0
        for code, count in enumerate(self.sent_by_code):
            if count and self._sampled_n[code]:
                total += count * self._sampled_bytes[code] / self._sampled_n[code]
        return int(total), False
