"""The public calls: `start`, `run`, `status`, `delete`, `shutdown`, `get_app_handle`, `get_deployment_handle`.

They only write desired state to the table and wait for the agents to make it so (see `agent.py`): a driver
that exits after `serve.run` leaves the application serving.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field

import p2pcompute as p2p
from p2pcompute import kv
from p2pcompute.mlkit.serve import agent as ag
from p2pcompute.mlkit.serve import state
from p2pcompute.mlkit.serve.deployment import Application, build
from p2pcompute.mlkit.serve.errors import DeploymentFailedError
from p2pcompute.mlkit.serve.handle import DeploymentHandle

_LOCATIONS = ("EveryNode", "HeadOnly", "Disabled")
_HTTP_KEYS = {"host", "port", "auth_token", "location", "request_timeout_s"}


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _check_http(http_options: dict | None, proxy_location: str) -> dict:
    opts = dict(http_options or {})
    unknown = sorted(set(opts) - _HTTP_KEYS)
    if unknown:
        raise ValueError(f"http_options: unknown option(s) {unknown}; known: {sorted(_HTTP_KEYS)}")
    if proxy_location not in _LOCATIONS:
        raise ValueError(f"proxy_location must be one of {_LOCATIONS}, not {proxy_location!r}")
    host = opts.setdefault("host", "127.0.0.1")
    port = opts.setdefault("port", 8000)
    if not isinstance(host, str) or not host:
        raise ValueError(f"http_options host must be an address string, not {host!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        raise ValueError(f"http_options port must be an integer in [0, 65535] (0: any free port), not {port!r}")
    timeout = opts.get("request_timeout_s")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise ValueError(f"http_options request_timeout_s must be a number of seconds > 0 (or None), not {timeout!r}")
    if not _loopback(host) and not opts.get("auth_token"):
        # Serving beyond this machine is an explicit choice, and never unauthenticated: make a token.
        opts["auth_token"] = secrets.token_urlsafe(24)
    opts["location"] = proxy_location
    return opts


def start(http_options: dict | None = None, *, proxy_location: str = "EveryNode", timeout_s: float = 120.0,
          **_ignored) -> dict:
    """Start serving: an agent (HTTP proxy, routers, reconciler) on every peer ("EveryNode"), on this driver's
    peer only ("HeadOnly"), or agents without HTTP ("Disabled"). `http_options`: `host` [127.0.0.1],
    `port` [8000; 0 picks a free port per peer], `auth_token` (required from non-loopback clients; made up
    and returned when binding beyond loopback), `request_timeout_s` [None: no limit; past it, HTTP 408]. Returns the HTTP options in force."""
    opts = _check_http(http_options, proxy_location)
    current = kv.get(state.HTTP, linearizable=True)
    if isinstance(current, dict):
        opts = current   # already started: the first options stay (as in Ray)
    else:
        kv.cas(state.HTTP, None, opts)
        opts = kv.get(state.HTTP, linearizable=True)
    alive = [n["NodeID"] for n in p2p.nodes() if n.get("Alive")]
    here = p2p.get_runtime_context().get_node_id()
    nodes = alive if opts["location"] == "EveryNode" else [here]
    agents = state.list_agents(linearizable=True)
    missing = [n for n in nodes if n not in agents]
    if missing:
        ag.start_agents(missing, opts)
    deadline = time.monotonic() + timeout_s
    while True:
        agents = state.list_agents(linearizable=True)
        if all(n in agents for n in nodes):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"serve agents did not start on {sorted(set(nodes) - set(agents))} within "
                               f"{timeout_s} s{_agent_errors(set(nodes) - set(agents))}")
        time.sleep(0.05)  # waiting for the agents' records in the table, bounded by the deadline
    return dict(opts)


def _agent_errors(nodes) -> str:
    """What the agents that did not register say (their constructor's error, if any)."""
    out = []
    for node in sorted(nodes):
        try:
            p2p.get(p2p.get_actor(f"agent#{node}", namespace=state.NAMESPACE).info.remote(), timeout=5)
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            out.append(f"{node}: {type(exc).__name__}: {exc}")
    return ("; " + "; ".join(out)) if out else ""


def run(app: Application, *, name: str = "default", route_prefix: str | None = "/", blocking: bool = False,
        timeout_s: float = 180.0, _wait: bool = True) -> DeploymentHandle:
    """Deploy (or update in place) the application `app` under `name`; wait until it serves; return a handle
    to its ingress deployment. Unchanged deployments keep their replicas; changed code rolls out replica by
    replica with no failed request; a changed user_config is applied with `reconfigure`."""
    state.check_name("application", name)
    if route_prefix is not None and (not isinstance(route_prefix, str) or not route_prefix.startswith("/")):
        raise ValueError(f"route_prefix must start with '/' (or be None for no HTTP route), not {route_prefix!r}")
    meta, codes = build(app, name, route_prefix)
    for other, m in state.list_apps(linearizable=True).items():
        if other != name and route_prefix is not None and m.get("route_prefix") == route_prefix:
            raise ValueError(f"route_prefix {route_prefix!r} is already used by app {other!r}; pick another or "
                             f"serve.delete({other!r})")
    if not state.list_agents(linearizable=True):
        start()
    for dep, code in codes.items():
        key = state.code_key(name, dep, meta["deployments"][dep]["version"])
        if kv.get(key, linearizable=True) != code:
            kv.put(key, code)
    for dep, spec in meta["deployments"].items():
        if spec["autoscaling"] is not None:
            kv.cas(state.target_key(name, dep), None, spec["num_replicas"])
        else:
            kv.delete(state.target_key(name, dep))
    kv.put(state.app_key(name), meta)
    if _wait:
        wait_for_app(name, timeout_s)
    handle = DeploymentHandle(meta["ingress"], name)
    if blocking:
        while True:
            time.sleep(3600)  # serve until interrupted, like Ray's blocking=True
    return handle


def wait_for_app(name: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        st = status().applications.get(name)
        if st is not None and st.status == "RUNNING":
            return
        if st is not None and st.status == "DEPLOY_FAILED":
            raise DeploymentFailedError(f"app {name!r} failed to deploy: {st.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"app {name!r} was not running after {timeout_s} s: {st}")
        time.sleep(0.05)  # waiting for replicas to report READY in the table, bounded by the deadline


@dataclass
class DeploymentStatus:
    status: str
    target: int
    replicas: dict[str, int]
    message: str = ""


@dataclass
class ApplicationStatus:
    status: str
    route_prefix: str | None
    deployments: dict[str, DeploymentStatus]
    message: str = ""


@dataclass
class ServeStatus:
    proxies: dict[str, dict] = field(default_factory=dict)
    applications: dict[str, ApplicationStatus] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def status() -> ServeStatus:
    """Every agent (its HTTP address or error) and every app with its deployments' replica states."""
    apps = state.list_apps(linearizable=True)
    slots = state.list_slots(linearizable=True)
    targets = kv.list(state.TARGET, linearizable=True)
    out = ServeStatus(proxies=state.list_agents(linearizable=True))
    for app, meta in apps.items():
        deps, messages = {}, []
        for dep, spec in meta.get("deployments", {}).items():
            mine = [s for s in slots if s.app == app and s.deployment == dep]
            target = targets.get(state.target_key(app, dep)) if spec.get("autoscaling") else None
            target = target if isinstance(target, int) else spec["num_replicas"]
            counts: dict[str, int] = {}
            for s in mine:
                counts[s.state] = counts.get(s.state, 0) + 1
            current = [s for s in mine if s.version == spec["version"]]
            ready = [s for s in current if s.state == "READY" and s.value.get("config") == spec["config_hash"]
                     and s.index < target]
            failed = [s for s in current if s.state == "FAILED"]
            if failed:
                st, msg = "DEPLOY_FAILED", failed[0].value.get("error", "")
                messages.append(f"{dep}: {msg}")
            elif len(ready) >= target and len(mine) == len(ready):
                st, msg = "HEALTHY", ""
            else:
                st, msg = "UPDATING", f"{len(ready)}/{target} replicas of the current version ready"
            deps[dep] = DeploymentStatus(st, target, counts, msg)
        states = {d.status for d in deps.values()}
        app_status = "DEPLOY_FAILED" if "DEPLOY_FAILED" in states else (
            "RUNNING" if states <= {"HEALTHY"} else "DEPLOYING")
        out.applications[app] = ApplicationStatus(app_status, meta.get("route_prefix"), deps, "\n".join(messages))
    for s in slots:
        if s.app not in apps and s.app not in out.applications:
            out.applications[s.app] = ApplicationStatus("DELETING", None, {})
    return out


def delete(name: str, _blocking: bool = True, timeout_s: float = 120.0) -> None:
    """Remove an application: its replicas drain and stop, its routes go away."""
    state.check_name("application", name)
    kv.delete(state.app_key(name))
    for key in kv.list(state.TARGET + name + "/", linearizable=True):
        kv.delete(key)
    if _blocking:
        deadline = time.monotonic() + timeout_s
        while state.list_slots(name, linearizable=True):
            if time.monotonic() > deadline:
                raise TimeoutError(f"app {name!r}: replicas still stopping after {timeout_s} s")
            time.sleep(0.05)  # waiting for the agents to stop the replicas, bounded by the deadline
    for key in kv.list(state.CODE + name + "/", linearizable=True):
        kv.delete(key)


def shutdown(timeout_s: float = 120.0) -> None:
    """Delete every application and stop every agent (the HTTP proxies with them)."""
    for name in state.list_apps(linearizable=True):
        kv.delete(state.app_key(name))
    deadline = time.monotonic() + timeout_s
    while state.list_slots(linearizable=True) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the agents to stop the replicas, bounded by the deadline
    for node in state.list_agents(linearizable=True):
        try:
            p2p.kill(p2p.get_actor(f"agent#{node}", namespace=state.NAMESPACE))
        except ValueError:
            pass
    for key in kv.list(state.ROOT, linearizable=True):
        kv.delete(key)
    from p2pcompute.mlkit.serve import handle as hd
    hd._routers.clear()


def get_app_handle(name: str) -> DeploymentHandle:
    meta = kv.get(state.app_key(state.check_name("application", name)), linearizable=True)
    if not isinstance(meta, dict):
        raise ValueError(f"no application named {name!r} is running; running: {sorted(state.list_apps())}")
    return DeploymentHandle(meta["ingress"], name)


def get_deployment_handle(deployment_name: str, app_name: str = "default") -> DeploymentHandle:
    meta = kv.get(state.app_key(state.check_name("application", app_name)), linearizable=True)
    if not isinstance(meta, dict) or deployment_name not in meta.get("deployments", {}):
        raise ValueError(f"no deployment {deployment_name!r} in application {app_name!r}")
    return DeploymentHandle(deployment_name, app_name)


def proxy_urls() -> dict[str, str]:
    """peer id -> the base URL of its HTTP proxy (peers whose proxy could not listen are left out)."""
    return {node: f"http://{rec['host']}:{rec['port']}" for node, rec in state.list_agents(linearizable=True).items()
            if rec.get("port")}
