"""The replicated metadata table, run by a peer: its replica, its client, and the local clients' requests.

Every peer runs a `TableReplica`; only the members of the current replica set vote and hold the table (3,
fewer while the cluster is smaller), and the leader adds and replaces members from membership's list of
live peers. Every peer also runs one `TableClient`, which routes the operations of its local processes to
the leader and keeps a read cache fresh by subscription, so lookups rarely cross the network.

Whom to ask: replicas put the replica set they know in their peer's gossiped view (`view["table"]`); a peer
that knows no replica yet takes it from there.

Replica state is kept in memory only. That is safe here because a peer never comes back under the same id
*without its memory*: a restarted peer is a new node, which the leader adds as a fresh member (and catches
up), while its old id is replaced as dead; a peer that was only paused (SIGSTOP) comes back with its state
intact, which Raft handles like any slow replica.

Deaths. When membership declares a peer dead, the names its processes held are released — by whichever
peer leads the table, once (a peer that becomes leader later handles the deaths it saw meanwhile; every
step is conditional on the record, so handling a death twice is harmless). A named detached actor with
restarts left is not released but restarted: its keeper recorded how to build it (`actors` table), and the
leader's peer hands that to its own keeper, which moves the name to the new incarnation (`replace_name`).

Lost majority. With 5 replicas any two may die; if a majority of the set is declared dead, nothing can
commit until an operator runs `p2p table recover` (see `table/recovery.py`). Meanwhile every operation
fails at once with an error naming the dead replicas and that command, instead of timing out.
"""

from __future__ import annotations

import logging
import random

from p2pcompute.config import system_config
from p2pcompute.net.effects import EffectRunner
from p2pcompute.runtime import messages as rm
from p2pcompute.table import messages as tm
from p2pcompute.table.client import TableClient
from p2pcompute.table.effects import Persist, ReplicaSetChanged, Reply, TableEvent
from p2pcompute.table.raft import TableReplica
from p2pcompute.table.recovery import Recovery

log = logging.getLogger("p2pcompute.table")

_TO_REPLICA = (tm.RequestVote, tm.RequestVoteReply, tm.AppendEntries, tm.AppendEntriesReply, tm.InstallSnapshot,
               tm.InstallSnapshotReply, tm.ClientRequest, tm.Subscribe)
_TO_CLIENT = (tm.ClientReply, tm.TableUpdate, tm.TableSnapshot)
_RECOVERY = (tm.RecoverQuery, tm.RecoverState, tm.RecoverLead)
_SECOND_NS = 1_000_000_000
_RESTART_TIMEOUT_NS = 120 * _SECOND_NS  # a restart handed to the keeper that never answered is given up
MAX_SPEC_BYTES = 1 << 20  # a detached actor's recipe (class and arguments) kept in the table, at most


class TableService:
    def __init__(self, peer, now_ns: int, bootstrap: bool):
        self.peer = peer
        rng = random.Random()
        cfg = system_config()
        self.replica = TableReplica(peer.peer_id, peer.addr, config=cfg.raft, rng=rng, now_ns=now_ns,
                                    bootstrap=bootstrap)
        known = {peer.peer_id: peer.addr} if bootstrap else {}
        self.client = TableClient(f"{peer.peer_id}-table", peer.addr, rng=random.Random(rng.random()),
                                  now_ns=now_ns, replicas=known, config=cfg.table_client)
        self.known_replicas: dict[str, str] = dict(known)
        self.leader: tuple[str, str] | None = None
        self._waiting: dict[int, object] = {}  # client request id -> (reply_to, caller's id) or a callback
        # Names claimed through this peer, by the local process that claimed them: released if it dies.
        self._claims: dict[str, list[tuple[str, dict]]] = {}
        self._alive: dict[str, str] = {}
        self.handles = _TO_REPLICA + _TO_CLIENT + _RECOVERY + (rm.TableOp, rm.DetachedCreated)
        # Deaths still to be handled by the leader (peer id -> None, oldest first), and when to try again.
        self._deaths: dict[str, None] = {}
        self._deaths_due_ns = 0
        self._was_leader = False
        # Detached actors to restart here: waiting for the keeper, then handed to it (request id -> record).
        self._restart_queue: list[tuple[str, str, dict, dict]] = []  # (actor id, name key, holder, record)
        self._restarting: dict[str, tuple[int, str, str, dict]] = {}  # rid -> (deadline, actor id, key, holder)
        self._recovery: Recovery | None = None
        self._recovery_waiter: tuple[str, str] | None = None
        # Persist: the table lives in memory (see the module docstring); cache events need no action here.
        self._effects = EffectRunner(peer.send, peer.wake_at, {
            Reply: self._on_reply, ReplicaSetChanged: self._on_replica_set,
            Persist: _ignore_effect, TableEvent: _ignore_effect})
        self.run(self.replica.on_tick(now_ns))
        # Keep a cache of the table fresh by subscription: most reads then never leave this peer.
        self.run(self.client.subscribe(now_ns))

    # ---- inputs -------------------------------------------------------------------------------------

    def dispatch(self, now_ns: int, sender_addr: str | None, msg) -> None:
        t = type(msg)
        if t is rm.TableOp:
            self.submit(now_ns, msg.reply_to, msg.request_id, msg.op, msg.linearizable)
        elif t is rm.DetachedCreated:
            self._on_restarted(msg)
        elif t in _RECOVERY:
            self._on_recovery_message(now_ns, msg)
        elif sender_addr is None:
            return
        elif t in _TO_REPLICA:
            self.run(self.replica.on_message(now_ns, sender_addr, msg))
        else:
            self.run(self.client.on_message(now_ns, sender_addr, msg))

    def submit(self, now_ns: int, reply_to: str, request_id: str, op, linearizable: bool) -> None:
        op = tuple(op) if isinstance(op, list) else op
        if isinstance(op, tuple) and op[:1] == ("recover",):
            self._start_recovery(now_ns, reply_to, request_id)
            return
        lost = self.lost_majority_error()
        if lost is not None:
            self.peer.send(reply_to, rm.TableOpReply(request_id, False, None, lost))
            return
        try:
            rid, effects = self.client.submit(now_ns, op, linearizable=linearizable)
        except Exception as exc:  # a malformed operation from a local client: its fault, say so
            self.peer.send(reply_to, rm.TableOpReply(request_id, False, None, f"bad operation: {exc}"))
            return
        if op[0] == "claim":
            proc = self.peer.proc_at(reply_to)
            self._waiting[rid] = _Claim(reply_to, request_id, proc, op[1], op[2])
        else:
            self._waiting[rid] = (reply_to, request_id)
        self.run(effects)

    def call(self, now_ns: int, op: tuple, then=None, linearizable: bool = False) -> None:
        """An operation of the peer's own (cleanup after deaths); `then(ok, result)` gets the outcome."""
        if self.lost_majority_error() is not None:
            (then or _ignore)(False, None)
            return
        try:
            rid, effects = self.client.submit(now_ns, op, linearizable=linearizable)
        except Exception:
            log.exception("bad table operation %r", op)
            return
        self._waiting[rid] = then or _ignore
        self.run(effects)

    # ---- cleanup after deaths -----------------------------------------------------------------------

    def on_process_died(self, now_ns: int, proc_id: str, kind: str, job_id: str, clean: bool) -> None:
        for key, record in self._claims.pop(proc_id, []):
            self.call(now_ns, ("release", key, record))
        if kind == "driver" and job_id:
            self.call(now_ns, ("job_update", job_id, {"state": "SUCCEEDED" if clean else "FAILED",
                                                      "end_time": _wall()}))

    def on_peer_died(self, now_ns: int, peer_id: str) -> None:
        """Names held by processes of a dead peer are released, or their detached actor restarted, by the
        leader's peer. Every peer remembers the death, in case it leads before the death is handled."""
        self._deaths[peer_id] = None
        while len(self._deaths) > 1024:
            del self._deaths[next(iter(self._deaths))]
        self._deaths_due_ns = now_ns

    def _handle_deaths(self, now_ns: int) -> None:
        peers = list(self._deaths)
        self._deaths.clear()
        prefixes = tuple(peer + "-" for peer in peers)

        def retry():
            for peer in peers:
                self._deaths[peer] = None
            self._deaths_due_ns = self.peer.now() + _SECOND_NS

        def with_actors(ok, actors):
            if not ok or not isinstance(actors, list):
                return retry()
            self.call(self.peer.now(), ("list_names", ""),
                      lambda ok2, names: self._after_deaths(prefixes, actors, names) if ok2 else retry(),
                      linearizable=True)

        self.call(now_ns, ("actor_list",), with_actors, linearizable=True)

    def _after_deaths(self, prefixes: tuple, actors: list, names) -> None:
        now = self.peer.now()
        recipes = {entry[0]: entry[1] for entry in actors
                   if isinstance(entry[0], str) and entry[0].startswith(prefixes) and isinstance(entry[1], dict)}
        restarting = set()
        for entry in names if isinstance(names, list) else []:
            key, holder = entry[0], entry[1]
            if not (isinstance(holder, dict) and str(holder.get("actor_id", "")).startswith(prefixes)):
                continue
            actor_id = holder["actor_id"]
            recipe = recipes.get(actor_id)
            if recipe is not None and recipe.get("name_record") == holder and recipe.get("restarts_left", 0) != 0:
                log.info("restarting detached actor %s (%s) whose peer died", key, actor_id)
                self._restart_queue.append((actor_id, key, holder, recipe))
                restarting.add(actor_id)
            else:
                self.call(now, ("release", key, holder))
        for actor_id in recipes:
            if actor_id not in restarting:
                self.call(now, ("actor_delete", actor_id))

    def _restart_detached(self, now_ns: int) -> None:
        """Hand queued restarts to this peer's keeper (started on first need)."""
        keeper = self.peer.keeper_address()
        if not keeper:
            return
        for actor_id, key, holder, recipe in self._restart_queue:
            rid = f"restart-{actor_id}-{now_ns}"
            env = dict(recipe.get("job_env") or {})
            env["restart_of"] = {"actor_id": actor_id, "name_key": key, "name_record": holder,
                                 "restarts_left": recipe.get("restarts_left", 0)}
            self._restarting[rid] = (now_ns + _RESTART_TIMEOUT_NS, actor_id, key, holder)
            self.peer.send(keeper, rm.CreateDetached(rid, self.peer.addr, recipe.get("spec", b""), env))
        self._restart_queue = []

    def _on_restarted(self, msg) -> None:
        waiting = self._restarting.pop(msg.request_id, None)
        if waiting is None:
            return
        _deadline, actor_id, key, holder = waiting
        if msg.error is None:
            log.info("detached actor %s restarted as %s", key, (msg.record or {}).get("actor_id"))
            return
        from p2pcompute import serialization
        try:
            reason = str(serialization.error_from_bytes(msg.error))
        except Exception:  # noqa: BLE001 - a report for the log only
            reason = "unreadable error"
        self._give_up_restart(actor_id, key, holder, reason)

    def _give_up_restart(self, actor_id: str, key: str, holder: dict, reason: str) -> None:
        # The name must not keep pointing at an actor that nobody will bring back.
        log.warning("could not restart detached actor %s (%s): %s; its name is released", key, actor_id, reason)
        now = self.peer.now()
        self.call(now, ("release", key, holder))
        self.call(now, ("actor_delete", actor_id))

    # ---- a lost majority, and recovery ----------------------------------------------------------------

    def lost_replicas(self) -> list[str]:
        """Members of the replica set that membership declared dead, when they are a majority of it."""
        membership = self.peer.membership
        if membership is None or not self.known_replicas:
            return []
        members = membership.members()
        dead = sorted(r for r in self.known_replicas if r in members and members[r].state in ("dead", "left"))
        return dead if 2 * len(dead) >= len(self.known_replicas) else []

    def lost_majority_error(self) -> str | None:
        dead = self.lost_replicas()
        if not dead:
            return None
        alive = sorted(set(self.known_replicas) - set(dead))
        return (f"the replicated table lost its majority: replicas {', '.join(dead)} of "
                f"{len(self.known_replicas)} are dead (alive: {', '.join(alive) or 'none'}), so nothing can be "
                f"read or written. If those peers are gone for good, run `p2p table recover` on any surviving "
                f"peer: it re-forms the table from the most advanced surviving replica and says what may have "
                f"been lost. Tasks, actors and objects keep working meanwhile")

    def _start_recovery(self, now_ns: int, reply_to: str, request_id: str) -> None:
        dead = self.lost_replicas()
        if not dead:
            self.peer.send(reply_to, rm.TableOpReply(request_id, False, None, (
                f"nothing to recover: a majority of the replica set ({', '.join(sorted(self.known_replicas))}) "
                f"is not declared dead here" if self.known_replicas else
                "nothing to recover: this peer knows no replica set yet")))
            return
        if self._recovery is not None and not self._recovery.done:
            self.peer.send(reply_to, rm.TableOpReply(request_id, False, None, "a recovery is already running"))
            return
        survivors = {r: a for r, a in self.known_replicas.items() if r not in dead}
        self._recovery, effects = Recovery.start(request_id, self.peer.addr, list(self.known_replicas), survivors,
                                                 now_ns)
        self._recovery_waiter = (reply_to, request_id)
        self.run(effects)
        self._finish_recovery()

    def _on_recovery_message(self, now_ns: int, msg) -> None:
        t = type(msg)
        if t is tm.RecoverQuery:
            term, last_index, last_term, commit = self.replica.recovery_state()
            self.peer.send(msg.reply_to, tm.RecoverState(msg.recovery_id, self.peer.peer_id, term, last_index,
                                                           last_term, commit))
        elif t is tm.RecoverState and self._recovery is not None:
            self.run(self._recovery.on_state(now_ns, msg))
            self._finish_recovery()
        elif t is tm.RecoverLead:
            # Only when this peer also sees the majority gone: a stray or replayed order changes nothing.
            if self.lost_replicas() and self.peer.peer_id in msg.replicas and \
                    all(isinstance(k, str) and isinstance(v, str) for k, v in msg.replicas.items()):
                log.warning("table recovery: leading a new replica set %s", sorted(msg.replicas))
                self.known_replicas = dict(msg.replicas)
                self.run(self.replica.force_lead(now_ns, dict(msg.replicas), msg.term))

    def _finish_recovery(self) -> None:
        rec, waiter = self._recovery, self._recovery_waiter
        if rec is None or waiter is None or not rec.done:
            return
        self._recovery_waiter = None
        reply_to, request_id = waiter
        if rec.error is not None:
            self.peer.send(reply_to, rm.TableOpReply(request_id, False, None, rec.error))
        else:
            log.warning("table recovery: %s", rec.outcome["note"])
            self.peer.send(reply_to, rm.TableOpReply(request_id, True, rec.outcome, None))

    def on_tick(self, now_ns: int, alive: dict[str, str], views: list) -> None:
        if alive != self._alive:
            self._alive = dict(alive)
            self.run(self.replica.on_members(now_ns, alive))
        leader = self.replica.is_leader()
        if leader and not self._was_leader:
            for peer_id in self._declared_dead():  # deaths seen while another replica led, or none did
                self._deaths.setdefault(peer_id, None)
        self._was_leader = leader
        if leader and self._deaths and now_ns >= self._deaths_due_ns:
            self._handle_deaths(now_ns)
        if self._restart_queue:
            self._restart_detached(now_ns)
        for rid, (deadline_ns, actor_id, key, holder) in list(self._restarting.items()):
            if now_ns >= deadline_ns:
                del self._restarting[rid]
                self._give_up_restart(actor_id, key, holder, "the keeper did not answer")
        if self._recovery is not None and not self._recovery.done:
            self.run(self._recovery.on_tick(now_ns))
            self._finish_recovery()
        if self.client.pending() and self.lost_majority_error() is not None:
            self.run(self.client.fail_all(now_ns, self.lost_majority_error()))
        if not self.known_replicas or (self.leader is None and self.replica.role != "leader"):
            self._learn_from_views(now_ns, views)
        self.run(self.replica.on_tick(now_ns))
        self.run(self.client.on_tick(now_ns))

    def _learn_from_views(self, now_ns: int, views: list) -> None:
        for view in views:
            info = view.get("table") if isinstance(view, dict) else None
            if isinstance(info, dict) and isinstance(info.get("replicas"), dict) and info["replicas"]:
                replicas = {k: v for k, v in info["replicas"].items() if isinstance(k, str) and isinstance(v, str)}
                leader = info.get("leader")
                hint = (leader, replicas[leader]) if isinstance(leader, str) and leader in replicas else None
                self.known_replicas = replicas
                self.leader = hint
                self.run(self.client.update_replicas(now_ns, replicas, hint))
                return

    def _declared_dead(self) -> list[str]:
        membership = self.peer.membership
        if membership is None:
            return []
        return sorted(m.peer_id for m in membership.members().values() if m.state in ("dead", "left"))

    def view_info(self) -> dict | None:
        """What this peer gossips about the table, if it is a replica or knows the set."""
        if not self.known_replicas:
            return None
        return {"replicas": dict(self.known_replicas), "leader": self.leader[0] if self.leader else None}

    # ---- effects ------------------------------------------------------------------------------------

    def run(self, effects: list) -> None:
        self._effects.run(effects)

    def _on_reply(self, eff: Reply) -> None:
        waiter = self._waiting.pop(eff.request_id, None)
        if waiter is None:
            return
        if callable(waiter):
            waiter(eff.ok, eff.result)
            return
        if type(waiter) is _Claim:
            if eff.ok and isinstance(eff.result, (list, tuple)) and eff.result and eff.result[0]:
                self._claims.setdefault(waiter.proc, []).append((waiter.key, waiter.record))
            waiter = (waiter.reply_to, waiter.request_id)
        reply_to, request_id = waiter
        self.peer.send(reply_to, rm.TableOpReply(request_id, eff.ok, eff.result, eff.error or None))

    def _on_replica_set(self, eff: ReplicaSetChanged) -> None:
        self.known_replicas = dict(eff.replicas)
        self.leader = (eff.leader_id, eff.leader_addr) if eff.leader_id and eff.leader_addr else None
        self.run(self.client.update_replicas(self.peer.now(), eff.replicas, self.leader))

    def status(self) -> dict:
        return {"role": self.replica.role, "term": self.replica.term, "replicas": sorted(self.known_replicas),
                "leader": self.leader[0] if self.leader else None, "commit_index": self.replica.commit_index}


class _Claim:
    __slots__ = ("reply_to", "request_id", "proc", "key", "record")

    def __init__(self, reply_to: str, request_id: str, proc: str, key: str, record):
        self.reply_to, self.request_id, self.proc, self.key, self.record = reply_to, request_id, proc, key, record


def _ignore(ok, result) -> None:
    pass


def _ignore_effect(_eff) -> None:
    pass


def _wall() -> float:
    import time
    return time.time()
