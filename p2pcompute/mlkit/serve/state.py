"""Where serve keeps its state: keys of the cluster's replicated table, through `p2pcompute.kv`.

Nothing else holds serve's state, so no process is the one whose death stops serving. Layout:

| key | value | written by |
|---|---|---|
| `serve/http` | HTTP options: host, port, location, auth token | `serve.start` |
| `serve/agent/<node>` | an agent (proxy + router + reconciler) on that peer: its address, or its bind error | the agent |
| `serve/app/<app>` | the app's metadata: route prefix, ingress, each deployment's version and options | `serve.run` |
| `serve/code/<app>/<deployment>/<version>` | the pickled class or function and its constructor arguments | `serve.run` |
| `serve/slot/<app>/<deployment>/<version>/<index>` | one replica slot: actor name, peer, state, config hash | agents (claim, by compare-and-set), the replica (READY) |
| `serve/target/<app>/<deployment>` | the replica count the autoscaler chose | the leading agent |
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pcompute import kv

ROOT = "serve/"
HTTP = "serve/http"
AGENT = "serve/agent/"
APP = "serve/app/"
CODE = "serve/code/"
SLOT = "serve/slot/"
TARGET = "serve/target/"
NAMESPACE = "serve"


def check_name(kind: str, name) -> str:
    if not isinstance(name, str) or not name or "/" in name or "#" in name:
        raise ValueError(f"an {kind} name must be a non-empty string without '/' or '#', not {name!r}")
    return name


def app_key(app: str) -> str:
    return APP + app


def code_key(app: str, dep: str, version: str) -> str:
    return f"{CODE}{app}/{dep}/{version}"


def slot_prefix(app: str, dep: str | None = None) -> str:
    return f"{SLOT}{app}/" if dep is None else f"{SLOT}{app}/{dep}/"


def slot_key(app: str, dep: str, version: str, index: int) -> str:
    return f"{SLOT}{app}/{dep}/{version}/{index}"


def target_key(app: str, dep: str) -> str:
    return f"{TARGET}{app}/{dep}"


def agent_key(node: str) -> str:
    return AGENT + node


@dataclass(frozen=True)
class SlotRecord:
    key: str
    app: str
    deployment: str
    version: str
    index: int
    value: dict

    @property
    def name(self) -> str:
        return self.value["name"]

    @property
    def state(self) -> str:
        return self.value.get("state", "")


def parse_slots(items: dict) -> list[SlotRecord]:
    out = []
    for key, value in items.items():
        parts = key[len(SLOT):].split("/")
        if len(parts) != 4 or not isinstance(value, dict) or "name" not in value:
            continue
        app, dep, version, index = parts
        try:
            out.append(SlotRecord(key, app, dep, version, int(index), value))
        except ValueError:
            continue
    return out


def list_slots(app: str | None = None, dep: str | None = None, *, linearizable: bool = False) -> list[SlotRecord]:
    prefix = SLOT if app is None else slot_prefix(app, dep)
    return parse_slots(kv.list(prefix, linearizable=linearizable))


def list_apps(*, linearizable: bool = False) -> dict[str, dict]:
    return {k[len(APP):]: v for k, v in kv.list(APP, linearizable=linearizable).items() if isinstance(v, dict)}


def list_agents(*, linearizable: bool = False) -> dict[str, dict]:
    return {k[len(AGENT):]: v for k, v in kv.list(AGENT, linearizable=linearizable).items() if isinstance(v, dict)}
