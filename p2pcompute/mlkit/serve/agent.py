"""The serve agent: one detached actor per peer running the HTTP proxy, routers and the reconciler.

Theory of operation. There is no serve controller. Every peer that serves runs an agent, created through a
task pinned to that peer so the peer's keeper owns it: it lives exactly as long as its peer. Each agent
serves HTTP for every app (`proxy.py`) and routes to replicas itself. One agent at a time *drives*: the one on
the live peer with the smallest id among those with an agent, a choice every agent makes alike from
membership and the table, so when the driving peer dies the next one takes over without an election. The
driver reconciles every `PERIOD_S`: it reads the apps and replica slots from the table, asks `planner.plan`
what to do, and does it — each slot is claimed by compare-and-set, so even two agents that both believe they
drive (for the moment membership disagrees) start each replica once. It also polls the replicas' ongoing
requests for the autoscaler and to find replicas that died for good, and starts agents on peers that lack
one (proxy_location="EveryNode").
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
import uuid

import p2pcompute as p2p
from p2pcompute import kv
from p2pcompute.errors import ActorDiedError
from p2pcompute.mlkit.serve import planner as pl
from p2pcompute.mlkit.serve import state
from p2pcompute.mlkit.serve.autoscaling import AutoscalingConfig, AutoscalingPolicy
from p2pcompute.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger("p2pcompute.mlkit.serve")
PERIOD_S = 0.25
# Routers act on views at most 2 x 0.5 s old: after this no router still picks a DRAINING replica, and none
# still holds a handle to one when it is killed (a call to a killed actor may never be answered).
DRAIN_GRACE_S = 1.5
STARTING_STUCK_S = 60.0


@p2p.remote(num_cpus=0, max_retries=3)
def _start_replica(node: str, name: str, actor_options: dict, app: str, dep: str, key: str, spec: dict) -> bool:
    from p2pcompute.mlkit.serve.replica import Replica
    opts = {k: v for k, v in actor_options.items() if v is not None}
    p2p.remote(Replica).options(
        name=name, namespace=state.NAMESPACE, lifetime="detached", max_restarts=3,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True), **opts).remote(app, dep, key, name, spec)
    return True


@p2p.remote(num_cpus=0, max_retries=3)
def _start_agent(node: str, http: dict) -> bool:
    p2p.remote(Agent).options(
        name=f"agent#{node}", namespace=state.NAMESPACE, lifetime="detached", get_if_exists=True,
        max_restarts=-1, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(node, http)
    return True


def start_agents(nodes: list[str], http: dict) -> None:
    p2p.get([_start_agent.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(n, http)
             for n in nodes], timeout=120)


class Agent:
    def __init__(self, node: str, http: dict):
        from p2pcompute.mlkit.serve import handle as hd
        self.node = node
        self.http = http
        self.loop = hd.serve_loop()
        self.record = {"node": node, "pid": os.getpid(), "host": None, "port": None, "error": None}
        if http.get("location", "EveryNode") != "Disabled":
            self._start_http()
        kv.put(state.agent_key(node), self.record)
        self.reconciler = Reconciler(node)
        threading.Thread(target=self.reconciler.run, name="serve-reconciler", daemon=True).start()

    def _start_http(self) -> None:
        try:
            import uvicorn
        except ImportError:
            self.record["error"] = "uvicorn is not installed: pip install 'p2pcompute[serve]'"
            return
        from p2pcompute.mlkit.serve.proxy import Proxy
        host, port = self.http.get("host", "127.0.0.1"), int(self.http.get("port", 8000))
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError as exc:
            self.record["error"] = f"cannot listen on {host}:{port}: {exc}"
            return
        self.proxy = Proxy(self.http.get("auth_token"), self.http.get("request_timeout_s"))
        config = uvicorn.Config(self.proxy, log_level="warning", access_log=False, lifespan="off",
                                timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.server.serve(sockets=[sock])))
        self.record.update(host=host, port=sock.getsockname()[1])

    def info(self) -> dict:
        return dict(self.record, driving=self.reconciler.driving)


class Reconciler:
    def __init__(self, node: str):
        self.node = node
        self.driving = False
        self.pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="serve-reconcile")
        self.busy: set[str] = set()           # slot keys with an action under way (by this agent)
        self.lock = threading.Lock()
        self.pings: dict[str, tuple] = {}      # actor name -> (future of metrics(), slot key)
        self.ongoing: dict[str, int] = {}      # actor name -> last reported ongoing requests
        self.dead: set[str] = set()            # actor names known dead for good
        self.policies: dict[tuple, AutoscalingPolicy] = {}
        self.starting_agents: set[str] = set()
        self.handles: dict[str, object] = {}    # actor name -> handle (names never move to another actor)

    def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the next period tries again
                log.exception("serve reconcile step failed")
            time.sleep(PERIOD_S)  # the reconcile period; each step acts on the table's latest state

    # ---- one period -----------------------------------------------------------------------------------

    def step(self) -> None:
        alive = sorted(n["NodeID"] for n in p2p.nodes() if n.get("Alive"))
        agents = state.list_agents()
        lead = min((n for n in agents if n in alive), default=None)
        self.driving = lead == self.node
        if not self.driving:
            return
        for node in agents:
            if node not in alive:
                kv.delete(state.agent_key(node))
        http = kv.get(state.HTTP)
        if isinstance(http, dict) and http.get("location", "EveryNode") == "EveryNode":
            for node in alive:
                if node not in agents and node not in self.starting_agents:
                    self.starting_agents.add(node)
                    self.pool.submit(self._start_agent, node, http)
        apps = state.list_apps()
        slots = state.list_slots()
        self._collect_pings()
        groups: dict[tuple[str, str], list[state.SlotRecord]] = {}
        for s in slots:
            groups.setdefault((s.app, s.deployment), []).append(s)
        wanted = set()
        for app, meta in apps.items():
            for dep, spec in meta.get("deployments", {}).items():
                wanted.add((app, dep))
                target = self._target(app, dep, spec, groups.get((app, dep), []))
                self._reconcile(app, dep, spec, target, groups.get((app, dep), []), alive)
        for (app, dep), group in groups.items():
            if (app, dep) not in wanted:
                self._reconcile(app, dep, None, 0, group, alive)
        self._ping(slots)

    def _target(self, app: str, dep: str, spec: dict, group: list) -> int:
        auto = spec.get("autoscaling")
        if not auto:
            return int(spec["num_replicas"])
        config = AutoscalingConfig.from_dict(auto)
        key = (app, dep, spec["version"], tuple(sorted(auto.items())))
        policy = self.policies.get(key)
        if policy is None:
            policy = self.policies[key] = AutoscalingPolicy(config)
        stored = kv.get(state.target_key(app, dep))
        current = stored if isinstance(stored, int) else config.start_replicas
        ready = [s for s in group if s.state == "READY" and s.version == spec["version"]]
        if len(ready) < min(current, config.max_replicas):
            return current   # still starting: decide on a full set's load
        total = sum(self.ongoing.get(s.name, 0) for s in ready)
        target = policy.decide(time.monotonic(), current, total)
        if target != stored:
            kv.put(state.target_key(app, dep), target)
        return target

    def _reconcile(self, app, dep, spec, target, group, alive) -> None:
        version = spec["version"] if spec else None
        config = spec["config_hash"] if spec else ""
        now = time.time()
        slots, by_key = [], {}
        for s in group:
            dead = s.name in self.dead or (s.state == "STARTING" and now - s.value.get("ts", now) > STARTING_STUCK_S
                                             and not _named(s.name))
            slot = pl.Slot(s.version, s.index, s.state, s.value.get("node", ""), s.value.get("config", ""), dead)
            slots.append(slot)
            by_key[(s.version, s.index)] = s
        plan = pl.plan(version, target, config, slots, alive)
        for action in plan.actions:
            if isinstance(action, pl.Start):
                key = state.slot_key(app, dep, action.version, action.index)
                self._submit(key, self._start, app, dep, key, None, action.node, spec)
            elif isinstance(action, pl.Replace):
                rec = by_key[(action.slot.version, action.slot.index)]
                self._submit(rec.key, self._start, app, dep, rec.key, rec.value, action.node, spec)
            elif isinstance(action, (pl.Stop, pl.Remove)):
                rec = by_key[(action.slot.version, action.slot.index)]
                grace = spec.get("graceful_shutdown_timeout_s", 20.0) if spec else 20.0
                self._submit(rec.key, self._stop, rec, isinstance(action, pl.Remove), grace)
            elif isinstance(action, pl.Reconfigure):
                rec = by_key[(action.slot.version, action.slot.index)]
                self._submit(rec.key, self._reconfigure, rec, spec)

    # ---- actions (on the pool; one at a time per slot) --------------------------------------------------

    def _submit(self, key: str, fn, *args) -> None:
        with self.lock:
            if key in self.busy:
                return
            self.busy.add(key)

        def run():
            try:
                fn(*args)
            except Exception:  # noqa: BLE001
                log.exception("serve action on %s failed", key)
            finally:
                with self.lock:
                    self.busy.discard(key)
        self.pool.submit(run)

    def _start(self, app, dep, key, old, node, spec) -> None:
        name = f"{app}#{dep}#{key.rsplit('/', 2)[-2]}#{key.rsplit('/', 1)[-1]}#{uuid.uuid4().hex[:8]}"
        rec = {"name": name, "node": node, "state": "STARTING", "config": "", "ts": time.time()}
        if not kv.cas(key, old, rec):
            return   # someone else claimed or changed the slot first
        if old is not None:
            self.dead.add(old["name"])
        try:
            p2p.get(_start_replica.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True))
                    .remote(node, name, spec.get("actor_options", {}), app, dep, key, spec), timeout=120)
        except Exception:
            kv.cas(key, rec, None)
            raise

    def _stop(self, rec: state.SlotRecord, dead: bool, grace_s: float) -> None:
        value = rec.value
        handle = None
        if not dead:
            try:
                handle = p2p.get_actor(rec.name, namespace=state.NAMESPACE)
            except ValueError:
                handle = None
        if handle is not None and rec.state in ("READY", "DRAINING"):
            draining = dict(value, state="DRAINING")
            if value.get("state") != "DRAINING" and not kv.cas(rec.key, value, draining):
                return
            value = draining
            try:
                p2p.get(handle.drain.remote(DRAIN_GRACE_S, grace_s), timeout=grace_s + 30)
            except Exception:  # noqa: BLE001 - it died meanwhile: nothing left to drain
                pass
        kv.cas(rec.key, value, None)
        if handle is not None:
            time.sleep(DRAIN_GRACE_S)  # let routers that read the slot before its removal see "stopped"
            p2p.kill(handle)
        self.ongoing.pop(rec.name, None)
        self.handles.pop(rec.name, None)

    def _reconfigure(self, rec: state.SlotRecord, spec: dict) -> None:
        handle = p2p.get_actor(rec.name, namespace=state.NAMESPACE)
        p2p.get(handle.reconfigure.remote(spec["user_config"], spec["config_hash"]), timeout=120)

    def _start_agent(self, node: str, http: dict) -> None:
        try:
            start_agents([node], http)
        finally:
            self.starting_agents.discard(node)

    # ---- replica health and load ------------------------------------------------------------------------

    def _ping(self, slots: list[state.SlotRecord]) -> None:
        for s in slots:
            if s.state != "READY" or s.name in self.pings or s.name in self.dead:
                continue
            handle = self.handles.get(s.name)
            if handle is None:
                try:
                    handle = self.handles[s.name] = p2p.get_actor(s.name, namespace=state.NAMESPACE)
                except ValueError:
                    self.dead.add(s.name)
                    continue
            self.pings[s.name] = (handle.metrics.remote(), time.monotonic())

    def _collect_pings(self) -> None:
        if not self.pings:
            return
        refs = {ref: name for name, (ref, _) in self.pings.items()}
        ready, _ = p2p.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in ready:
            name = refs[ref]
            del self.pings[name]
            try:
                self.ongoing[name] = p2p.get(ref)["ongoing"]
            except ActorDiedError:
                self.dead.add(name)
            except Exception:  # noqa: BLE001 - unavailable (restarting): ask again next time
                pass
        for name, (ref, at) in list(self.pings.items()):
            if time.monotonic() - at > 30:
                del self.pings[name]


def _named(name: str) -> bool:
    try:
        p2p.get_actor(name, namespace=state.NAMESPACE)
        return True
    except ValueError:
        return False
