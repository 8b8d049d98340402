"""The simulated world: peers on machine slots, the network between them, and the ground truth the checks use.

The cluster knows what the cores can only guess: which peers are really up, which crashed when, which are
paused. It starts the peers (pre-joined by default: each core is handed the full membership as if a seed had
answered its Join, which skips a join storm that would cost O(N^2) messages for nothing; `--join-mode
join` simulates the real joins), carries out the fault primitives (crash, restart, pause, resume, leave,
join, kill a worker), and judges membership agreement against the truth.

Peer ids are `p<slot>g<generation>`: a restart with `--restart-id new` (the runtime's behaviour: a new
process gets a fresh random id) is the next generation on the same slot; with `--restart-id same` it keeps
the id and address, and its membership core takes over from the old incarnation by refuting it.

Death is final: a peer whose membership core reports `Fenced` (it learned it was declared dead, after a
pause or partition longer than the suspicion timeout) goes down with all its processes, exactly as in a
crash, and restarts (as a new generation) if the fault schedule restarts crashed peers.
"""

from __future__ import annotations

import random

from p2pcompute.lease import resources
from p2pcompute.net.membership import MembershipConfig, SharedStart
from p2pcompute.net.membership_messages import ALIVE
from sims.engine import Engine
from sims.invariants import DetectionTracker, LeaseAudit, TaskLedger, Violations
from sims.network import Network, Partition
from sims.options import SimOptions
from sims.peer import SimPeer, peer_id_of

S = 1_000_000_000


class Cluster:
    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        self.engine = Engine(opts.seed)
        engine = self.engine
        self.violations = Violations(engine)
        # Component generators, drawn in a fixed order (see engine.py).
        self.rng_faults = engine.derive_rng()
        self._rng_peers = engine.derive_rng()
        self.rng_work = engine.derive_rng()
        self.rng_obs = engine.derive_rng()  # observation only: sampling never changes the run
        self._rng_clock = engine.derive_rng()
        f = opts.faults
        self.net = Network(engine, latency=opts.latency, zones=opts.zones, zone_latency_ns=opts.zone_latency,
                           loss=f.loss, dup=f.dup, reorder=f.reorder, reorder_by_ns=f.reorder_by, rto_ns=f.rto,
                           use_codec=opts.codec, unreliable_streams=opts.unreliable_streams,
                           on_violation=self.violations.add)
        self.audit = LeaseAudit(self.violations)
        self.ledger = TaskLedger()
        self.tracker = DetectionTracker()
        self.membership_config = MembershipConfig()
        from sims import broken
        from p2pcompute.lease.core import LeaseCore
        from p2pcompute.net.membership import Membership
        self.membership_class = broken.MembershipRefutingItsDeath if "refutation" in opts.breaks else Membership
        self.lease_class = broken.LeaseCoreIgnoringCapacity if "capacity" in opts.breaks else LeaseCore
        self.with_leases = opts.workload != "membership"
        self.peer_total = {resources.CPU: opts.cpus * resources.UNIT}
        self.worker_start_ns = 20_000_000
        self.check_cores = 0.05  # share of lease ticks followed by the core's own check_invariants
        self.workload = None  # set by run.py before build()
        self.slots: list[SimPeer | None] = []
        self.gens: list[int] = []
        self.up: dict[str, SimPeer] = {}  # peers whose process is up (paused ones included), by id
        self._clocks: dict[int, tuple[int, float]] = {}
        self.infeasible = 0
        self.false_dead = 0
        self.fenced = 0
        self.fault_scheduler = None  # set by the FaultScheduler, if the run has faults
        self.faults_log: list[tuple[int, str, str]] = []  # (time, kind, peer id)
        self.last_fault_ns = 0

    # ---- construction -------------------------------------------------------------------------------

    def peer_rng(self) -> random.Random:
        return random.Random(self._rng_peers.getrandbits(64))

    def clock_of(self, slot: int) -> tuple[int, float]:
        """A machine's clock: (offset ns, rate). Drawn once per slot; a restart keeps the machine's clock."""
        clock = self._clocks.get(slot)
        if clock is None:
            f = self.opts.faults
            off = int(self._rng_clock.uniform(-f.skew, f.skew)) if f.skew else 0
            rate = 1.0 + self._rng_clock.uniform(-f.drift, f.drift) if f.drift else 1.0
            clock = self._clocks[slot] = (off, rate)
        return clock

    def _new_peer(self, slot: int, gen: int, peer_id: str | None = None) -> SimPeer:
        if slot == len(self.slots):
            self.slots.append(None)
            self.gens.append(gen)
        self.gens[slot] = gen
        peer = SimPeer(self, slot, gen, peer_id or peer_id_of(slot, gen))
        self.slots[slot] = peer
        self.up[peer.peer_id] = peer
        return peer

    def build(self) -> None:
        peers = [self._new_peer(slot, 0) for slot in range(self.opts.peers)]
        if self.opts.join_mode == "prejoin" or len(peers) == 1:
            members = tuple((p.peer_id, p.addr, ALIVE, 0, {"gen": 0}) for p in peers)
            # Every peer's current view rides along too: otherwise all N views would first spread by
            # gossip, N^2 records, which the real cluster never pays at once.
            views = tuple(p.membership.member(p.peer_id).view_rec for p in peers)
            # One copy of the members for every core, until a core changes one (copy on write): N cores
            # holding N members each took 256 bytes a member, 26 GB at 10,000 peers.
            boot = SharedStart(members, views)
            for p in peers:
                self.workload.on_peer_up(p, restarted=False)
                p.boot(boot)
        else:
            # A real join storm: the first peer starts alone, the others join through a random earlier
            # peer, spread over the first second.
            peers[0].join([])
            self.workload.on_peer_up(peers[0], restarted=False)
            for i, p in enumerate(peers[1:], start=1):
                seed = peers[self.rng_faults.randrange(i)].addr
                self.engine.at(i * S // len(peers), self._start_joiner, p, seed)

    def _start_joiner(self, peer: SimPeer, seed: str) -> None:
        if peer.up:
            self.workload.on_peer_up(peer, restarted=False)
            peer.join([seed])

    # ---- truth --------------------------------------------------------------------------------------

    def driver_peers(self) -> list[SimPeer]:
        return [p for p in self.up.values() if p.drivers]

    def live_process(self, proc_id: str) -> bool:
        peer = self.up.get(proc_id.split("-", 1)[0])
        return peer is not None and any(d.proc_id == proc_id and d.alive for d in peer.drivers)

    def member_declared_gone(self, observer: SimPeer, e) -> None:
        self.tracker.observed(e.peer_id, observer.peer_id, self.engine.now)
        target = self.up.get(e.peer_id)
        if e.state == "dead" and target is not None and not target.leaving and e.meta.get("gen") == target.gen:
            self.false_dead += 1

    def member_seen(self, observer: SimPeer, e) -> None:
        """A member came back or changed identity: for a same-id restart, that is the crash detected."""
        pending = self.tracker.pending.get(e.peer_id)
        if pending is not None and e.meta.get("gen") != pending.gen:
            self.tracker.observed(e.peer_id, observer.peer_id, self.engine.now)

    def agreement(self, observers: list[SimPeer] | None = None) -> tuple[float, list[str]]:
        """Share of `observers` (default: every up peer) whose alive members are exactly the up peers,
        and a description of the first few disagreements."""
        share, _, problems = self._judge(observers)
        return share, problems

    def _judge(self, observers: list[SimPeer] | None) -> tuple[float, float, list[str]]:
        """(share agreeing exactly, mean accuracy, first problems): one look at each observer's members."""
        truth = {pid for pid, p in self.up.items() if not p.leaving}
        observers = [p for p in (observers if observers is not None else self.up.values())
                     if not p.leaving and not p.paused]
        if not observers:
            return 1.0, 1.0, []
        good, acc, problems = 0, 0.0, []
        for p in observers:
            seen = set(p.membership.alive_ids())  # alive and suspect: a suspect is not yet agreed on
            suspects = p.membership.suspect_ids()
            if seen == truth:
                acc += 1.0
                if not suspects:
                    good += 1
                    continue
            else:
                acc += len(seen & truth) / len(seen | truth)
            if len(problems) < 5:
                missing, extra = sorted(truth - seen), sorted(seen - truth)
                suspects = sorted(suspects)
                problems.append(f"{p.peer_id} does not see {missing[:5]}{'...' if len(missing) > 5 else ''} "
                                f"alive and wrongly sees {extra[:5]}{'...' if len(extra) > 5 else ''} alive "
                                f"(missing {len(missing)}, extra {len(extra)}, suspect {suspects[:5]})")
        return good / len(observers), acc / len(observers), problems

    def agreement_sample(self, k: int = 32) -> tuple[float, float]:
        """(share of sampled observers agreeing exactly with the truth, their mean accuracy): accuracy is
        |seen & truth| / |seen | truth| over the live members, 1.0 for a perfect view."""
        ups = [p for p in self.up.values() if not p.leaving and not p.paused]
        if len(ups) > k:
            ups = self.rng_obs.sample(ups, k)
        if not ups:
            return 1.0, 1.0
        share, acc, _ = self._judge(ups)
        return share, acc

    # ---- faults -------------------------------------------------------------------------------------

    def _fault(self, kind: str, peer_id: str) -> None:
        self.faults_log.append((self.engine.now, kind, peer_id))
        self.last_fault_ns = self.engine.now
        self.engine.log.add_text(f"{self.engine.now} {kind} {peer_id}")

    def strands_a_joiner(self, peer: SimPeer) -> bool:
        """Would taking `peer` down leave a peer that is still joining with no live seed? (Its Join would
        then go unanswered for ever: an operator's mistake, not something the protocol can fix.)"""
        for p in self.up.values():
            if p is not peer and p.seeds and not p.membership.joined:
                live = [a for a in p.seeds if a != peer.addr and any(q.addr == a for q in self.up.values())]
                if not live:
                    return True
        return False

    def crash(self, peer: SimPeer, kind: str = "crash") -> None:
        self._fault(kind, peer.peer_id)
        # Detection is timed at the peers that believe the crashed one is up: one that already holds it dead
        # (a false death not yet refuted) or never heard of it has nothing left to detect.
        observers = [pid for pid, p in self.up.items() if p is not peer
                     and (m := p.membership.member(peer.peer_id)) is not None and m.state in ("alive", "suspect")
                     and m.meta.get("gen") == peer.gen]
        self._down(peer)
        self.tracker.crashed(peer.peer_id, peer.gen, self.engine.now, observers)

    def fence(self, peer: SimPeer) -> None:
        """The peer learned it was declared dead: its processes end, as in a crash (runtime/peer.py exits)."""
        if not peer.up:
            return
        self.fenced += 1
        self.crash(peer, kind="fenced")
        if self.fault_scheduler is not None:
            self.fault_scheduler.restart_later(peer.slot)

    def _down(self, peer: SimPeer) -> None:
        peer.stop()
        self.up.pop(peer.peer_id, None)
        if self.slots[peer.slot] is peer:
            self.slots[peer.slot] = None
        self.tracker.observer_gone(peer.peer_id)
        self.workload.on_peer_down(peer)

    def restart(self, slot: int) -> SimPeer | None:
        if self.slots[slot] is not None or not self.up:
            return None
        gen = self.gens[slot] + 1
        same = self.opts.restart_id == "same"
        # With the same id the address is the same too; `gen` in the meta tells the incarnations apart.
        peer = self._new_peer(slot, gen, peer_id_of(slot, 0) if same else None)
        self._fault("restart", peer.peer_id)
        self.workload.on_peer_up(peer, restarted=True)
        peer.join(self._seeds(exclude=peer))
        return peer

    def _seeds(self, exclude: SimPeer | None = None) -> list[str]:
        """Addresses of up to three random live peers to join through (as `p2p join` takes several): a
        joiner whose only seed dies before answering would never join."""
        live = [p.addr for p in self.up.values() if p is not exclude and not p.leaving]
        return self.rng_faults.sample(live, min(3, len(live)))

    def pause(self, peer: SimPeer, duration_ns: int) -> None:
        if peer.paused:
            return
        self._fault("pause", peer.peer_id)
        peer.pause()
        self.engine.at(self.engine.now + duration_ns, self._resume, peer)

    def _resume(self, peer: SimPeer, _=None) -> None:
        if peer.up and peer.paused:
            self._fault("resume", peer.peer_id)
            peer.resume()

    def resume_all(self) -> None:
        for peer in list(self.up.values()):
            self._resume(peer)

    def leave(self, peer: SimPeer) -> None:
        if peer.leaving:
            return
        self._fault("leave", peer.peer_id)
        peer.leave()
        # The runtime lingers 500 ms so the goodbye goes out; the processes then stop.
        self.engine.at(self.engine.now + S // 2, self._left, peer)

    def _left(self, peer: SimPeer, _=None) -> None:
        if peer.up:
            self._down(peer)
            self.slots[peer.slot] = None
            self.gens[peer.slot] = 1 << 20  # gone for good: never restarted

    def join_new(self) -> SimPeer | None:
        seeds = self._seeds()
        if not seeds:
            return None
        peer = self._new_peer(len(self.slots), 0)
        self._fault("join", peer.peer_id)
        self.workload.on_peer_up(peer, restarted=False)
        peer.join(seeds)
        return peer

    def kill_worker(self, peer: SimPeer) -> None:
        if peer.workers and not peer.paused:
            worker_id = self.rng_faults.choice(list(peer.workers))
            self._fault("kill", worker_id)
            peer.kill_worker(worker_id)

    def partition(self, group: list[SimPeer], mode: str, duration_ns: int) -> Partition:
        now = self.engine.now
        p = Partition(frozenset(peer.slot for peer in group), mode, now, now + duration_ns)
        self._fault(f"partition-{mode}", ",".join(peer.peer_id for peer in group[:4]) + ("..." if len(group) > 4 else ""))
        self.net.add_partition(p)
        self.engine.at(p.end_ns, self._partition_over, p)
        return p

    def _partition_over(self, p: Partition, _=None) -> None:
        if p in self.net.partitions:
            self._fault("heal", "")
            self.net.heal(p)

    def heal_all(self) -> None:
        if self.net.partitions:
            self._fault("heal", "all")
            self.net.heal()
