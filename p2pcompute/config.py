"""Defaults, and the one way to tune the protocols: the system config.

Theory of operation. Every tunable of the pure cores lives in a config dataclass next to its core
(`MembershipConfig`, `LeaseConfig`, `SubmitterConfig`, `RaftConfig`, the table's `ClientConfig`) or here
(`TransportConfig`). One surface reaches all of them, in sections named after them:

    membership, lease, submitter, raft, table_client, transport

and three ways to set a key, later ones winning:

1. a file: `p2p start --config FILE` / `p2p join --config FILE` (JSON, or YAML with pyyaml installed),
   `{"membership": {"probe_interval_ms": 250}, "transport": {"unreachable_after_ms": 5000}}`; the peer
   gets its path as `P2P_CONFIG_FILE`;
2. `init(_system_config={...})` (Ray's spelling; the same nested dict, or flat "section.key" keys), for the
   embedded peer of `init()` and the driver; passed on as the JSON of `P2P_SYSTEM_CONFIG`;
3. one environment variable per key: `P2P_<SECTION>_<KEY>`, e.g. `P2P_MEMBERSHIP_PROBE_INTERVAL_MS=250`
   (the value is read as JSON when it parses, else as a string).

Every process (peer, workers, keeper, drivers) reads the merged result with `system_config()`; children
inherit the environment, so a setting reaches every process started after it. Validation is strict: an
unknown section or key, or a value of the wrong type, is an `InvalidArgumentError` naming the key, where
it came from, and what is accepted. Settings that must agree across the cluster (Raft's `max_sessions`,
the frame limit) are the operator's to keep equal on every peer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import p2pcompute

# Values at or below this size travel inside messages; larger ones go to the shared-memory store.
INLINE_MAX_BYTES = 100 * 1024
DEFAULT_PORT = 7700

FILE_ENV = "P2P_CONFIG_FILE"
JSON_ENV = "P2P_SYSTEM_CONFIG"


def package_root() -> str:
    """The directory holding the `p2pcompute` package, so child processes import the same code."""
    return os.path.dirname(os.path.dirname(os.path.abspath(p2pcompute.__file__)))


def default_home() -> str:
    return os.environ.get("P2P_HOME") or os.path.join(os.path.expanduser("~"), ".p2pcompute")


@dataclass
class TransportConfig:
    # A destination that does not connect (or fails authentication) within this long is reported
    # unreachable, with the number of messages that were waiting for it.
    unreachable_after_ms: int = 10_000


def _sections() -> dict[str, type]:
    from p2pcompute.lease.core import LeaseConfig
    from p2pcompute.lease.submitter import SubmitterConfig
    from p2pcompute.net.membership_config import MembershipConfig
    from p2pcompute.table.client import ClientConfig
    from p2pcompute.table.raft import RaftConfig
    return {"membership": MembershipConfig, "lease": LeaseConfig, "submitter": SubmitterConfig,
            "raft": RaftConfig, "table_client": ClientConfig, "transport": TransportConfig}


@dataclass(frozen=True)
class SystemConfig:
    membership: object
    lease: object
    submitter: object
    raft: object
    table_client: object
    transport: TransportConfig


def _error(message: str):
    from p2pcompute.errors import InvalidArgumentError
    return InvalidArgumentError(message)


def _check_value(section: str, key: str, value, field, origin: str):
    """The value, if its type fits the field (judged by the default's type); else a clear error."""
    what = f"{section}.{key} (from {origin})"
    default = field.default
    if value is None and "None" in str(field.type):
        return None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise _error(f"{what} must be true or false, not {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _error(f"{what} must be an integer, not {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _error(f"{what} must be a number, not {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise _error(f"{what} must be a string, not {value!r}")
    raise _error(f"{what} cannot be set")


def normalize(settings, origin: str) -> dict[str, dict]:
    """Validate `settings` — {"section": {"key": value}} or {"section.key": value} — into the nested form.
    Raises InvalidArgumentError for an unknown section or key or a value of the wrong type."""
    if not isinstance(settings, dict):
        raise _error(f"the system config (from {origin}) must be a mapping of sections, not "
                     f"{type(settings).__name__}")
    sections = _sections()
    out: dict[str, dict] = {}
    for name, value in settings.items():
        if isinstance(name, str) and "." in name:
            section, key = name.split(".", 1)
            items = {key: value}
        else:
            section = name
            if not isinstance(value, dict):
                raise _error(f"config section {name!r} (from {origin}) must be a mapping of keys to values")
            items = value
        cls = sections.get(section)
        if cls is None:
            raise _error(f"unknown config section {section!r} (from {origin}); known sections: "
                         f"{', '.join(sorted(sections))}")
        defaults = {f.name: f for f in dataclasses.fields(cls)}
        for key, item in items.items():
            if key not in defaults:
                raise _error(f"unknown config key {section}.{key} (from {origin}); {section} has: "
                             f"{', '.join(sorted(defaults))}")
            out.setdefault(section, {})[key] = _check_value(section, key, item, defaults[key], origin)
    return out


def read_file(path: str) -> dict[str, dict]:
    """A config file's settings, validated (JSON, or YAML when the name ends in .yaml/.yml)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise _error(f"cannot read the config file {path}: {exc.strerror}") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise _error(f"{path} is YAML, which needs pyyaml (pip install pyyaml); or write it as JSON") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise _error(f"{path} is not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise _error(f"{path} is not valid JSON: {exc}") from None
    return normalize(data, path)


def _from_environment(environ) -> dict[str, dict]:
    merged: dict[str, dict] = {}

    def merge(settings: dict[str, dict]) -> None:
        for section, items in settings.items():
            merged.setdefault(section, {}).update(items)

    if environ.get(FILE_ENV):
        merge(read_file(environ[FILE_ENV]))
    if environ.get(JSON_ENV):
        try:
            data = json.loads(environ[JSON_ENV])
        except ValueError as exc:
            raise _error(f"{JSON_ENV} is not valid JSON: {exc}") from None
        merge(normalize(data, JSON_ENV))
    sections = sorted(_sections(), key=len, reverse=True)  # "table_client" before any shorter prefix
    for var, raw in environ.items():
        if not var.startswith("P2P_"):
            continue
        rest = var[4:].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        merge(normalize({section: {rest[len(section) + 1:]: value}}, var))
    return merged


_cache: tuple | None = None


def system_config(environ=None) -> SystemConfig:
    """The merged, validated config of this process (defaults, file, init()'s dict, P2P_* variables)."""
    global _cache
    environ = os.environ if environ is None else environ
    key = tuple(sorted((k, v) for k, v in environ.items() if k.startswith("P2P_")))
    if _cache is not None and _cache[0] == key:
        return _cache[1]
    settings = _from_environment(environ)
    built = {}
    for section, cls in _sections().items():
        try:
            built[section] = cls(**settings.get(section, {}))
        except (TypeError, ValueError) as exc:  # the dataclass's own checks (e.g. MembershipConfig's)
            raise _error(f"config section {section}: {exc}") from None
    config = SystemConfig(**built)
    _cache = (key, config)
    return config


_set_by_init = False


def set_process_config(settings) -> None:
    """`init(_system_config=...)`: validate and publish to this process and the ones it starts; None undoes
    what an earlier init() set (never what the user's own environment set)."""
    global _set_by_init
    if settings is None:
        if _set_by_init:
            os.environ.pop(JSON_ENV, None)
            _set_by_init = False
        return
    normalized = normalize(settings, "init(_system_config=...)")
    previous = os.environ.get(JSON_ENV)
    os.environ[JSON_ENV] = json.dumps(normalized)
    try:
        system_config()  # the dataclasses' own checks, now rather than in a child process
    except Exception:
        if previous is None:
            os.environ.pop(JSON_ENV, None)
        else:
            os.environ[JSON_ENV] = previous
        raise
    _set_by_init = True
