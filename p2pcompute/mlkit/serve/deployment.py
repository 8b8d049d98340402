"""Deployments and applications: `@serve.deployment`, `.options()`, `.bind()` and the spec an app becomes.

`Deployment` wraps a class or function with its serving options. `bind(*args)` makes an `Application`, a node
of a graph: arguments that are themselves bound deployments become `DeploymentHandle`s when the replicas are
built, which is how deployments compose. `build` turns the graph into what the cluster stores: one plain
metadata record for the app and one pickled code blob per deployment and version (see `state.py`). A
deployment's *version* is a hash of its code, constructor arguments and replica options: replicas of an
unchanged version are kept by `serve.run`, a new version rolls out; user_config and replica counts change in
place.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field, replace
from typing import Any

import cloudpickle

from p2pcompute.mlkit.serve.autoscaling import AutoscalingConfig

_ACTOR_OPTIONS = {"num_cpus", "num_gpus", "memory", "resources"}


@dataclass(frozen=True)
class DeploymentConfig:
    num_replicas: int | None = None
    max_ongoing_requests: int = 5
    max_queued_requests: int = -1
    user_config: Any = None
    autoscaling_config: AutoscalingConfig | None = None
    ray_actor_options: dict = field(default_factory=dict)
    graceful_shutdown_timeout_s: float = 20.0
    version: str | None = None

    def __post_init__(self):
        n = self.num_replicas
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise ValueError(f"num_replicas must be an integer >= 0, not {n!r}")
        if n is not None and self.autoscaling_config is not None:
            raise ValueError("give num_replicas or autoscaling_config, not both (autoscaling sets the count)")
        m = self.max_ongoing_requests
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"max_ongoing_requests must be an integer >= 1, not {m!r}")
        q = self.max_queued_requests
        if not isinstance(q, int) or isinstance(q, bool) or q < -1:
            raise ValueError(f"max_queued_requests must be an integer >= 0, or -1 for no limit; not {q!r}")
        if not isinstance(self.ray_actor_options, dict):
            raise TypeError(f"ray_actor_options must be a dict, not {type(self.ray_actor_options).__name__}")
        bad = sorted(set(self.ray_actor_options) - _ACTOR_OPTIONS)
        if bad:
            raise ValueError(f"ray_actor_options: unsupported option(s) {bad}; supported: {sorted(_ACTOR_OPTIONS)}")
        try:
            json.dumps(self.user_config)
        except (TypeError, ValueError):
            raise TypeError("user_config must be JSON-serializable plain data (dicts, lists, str, numbers)") from None

    @property
    def start_replicas(self) -> int:
        if self.autoscaling_config is not None:
            return self.autoscaling_config.start_replicas
        return 1 if self.num_replicas is None else self.num_replicas


_OPTION_NAMES = {"name", "num_replicas", "max_ongoing_requests", "max_queued_requests", "user_config",
                 "autoscaling_config", "ray_actor_options", "graceful_shutdown_timeout_s", "version"}


def _config_with(config: DeploymentConfig, options: dict) -> DeploymentConfig:
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown deployment option(s) {unknown}; known: {sorted(_OPTION_NAMES)}")
    opts = {k: v for k, v in options.items() if k != "name"}
    if opts.get("num_replicas") == "auto":
        opts["num_replicas"] = None
        opts.setdefault("autoscaling_config", {"min_replicas": 1, "max_replicas": 100})
    auto = opts.get("autoscaling_config")
    if isinstance(auto, dict):
        opts["autoscaling_config"] = AutoscalingConfig.from_dict(auto)
    if "autoscaling_config" in opts and opts["autoscaling_config"] is not None and "num_replicas" not in opts:
        opts["num_replicas"] = None
    if "num_replicas" in opts and opts["num_replicas"] is not None and "autoscaling_config" not in opts:
        opts["autoscaling_config"] = None
    return replace(config, **opts)


class Deployment:
    """A class or function served by replicas. Make one with `@serve.deployment`."""

    def __init__(self, target, name: str, config: DeploymentConfig):
        self._target = target
        self._name = name
        self._config = config

    @property
    def name(self) -> str:
        return self._name

    @property
    def config(self) -> DeploymentConfig:
        return self._config

    @property
    def func_or_class(self):
        return self._target

    def options(self, **options) -> "Deployment":
        """A copy with some options changed (same names as `@serve.deployment`)."""
        name = options.get("name", self._name)
        if not isinstance(name, str) or not name or "/" in name or "#" in name:
            raise ValueError(f"a deployment name must be a non-empty string without '/' or '#', not {name!r}")
        return Deployment(self._target, name, _config_with(self._config, options))

    def bind(self, *args, **kwargs) -> "Application":
        return Application(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"deployment {self._name} cannot be called directly; bind it (.bind(...)) and "
                        f"serve.run() it, then call it through its handle")

    def __repr__(self) -> str:
        return f"Deployment({self._name})"


class Application:
    """A bound deployment: what `serve.run` takes. Bound deployments in its arguments become handles."""

    def __init__(self, deployment: Deployment, args: tuple, kwargs: dict):
        self.deployment = deployment
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Application({self.deployment.name})"


def deployment(_func_or_class=None, *, name: str | None = None, **options):
    """Make a class or function a deployment, with Ray Serve's options:

    `num_replicas` (int, or "auto"), `max_ongoing_requests` [5], `max_queued_requests` [-1: unbounded],
    `user_config` (passed to `reconfigure`), `autoscaling_config` (dict or `AutoscalingConfig`),
    `ray_actor_options` (`num_cpus`, `num_gpus`, `memory`, `resources`), `graceful_shutdown_timeout_s`,
    `version`, `name`.
    """
    def deco(target):
        if not (inspect.isclass(target) or callable(target)):
            raise TypeError(f"@serve.deployment decorates a class or a function, not {type(target).__name__}")
        base = Deployment(target, target.__name__, DeploymentConfig())
        return base.options(name=name or target.__name__, **options)
    if _func_or_class is not None:
        return deco(_func_or_class)
    return deco


# ---- building an application's spec ---------------------------------------------------------------------


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def config_hash(user_config: Any) -> str:
    return _digest(json.dumps(user_config, sort_keys=True).encode())


def build(app: Application, app_name: str, route_prefix: str | None) -> tuple[dict, dict[str, bytes]]:
    """(metadata record, {deployment: code blob}) for the graph rooted at `app`."""
    from p2pcompute.mlkit.serve.handle import DeploymentHandle

    if not isinstance(app, Application):
        raise TypeError(f"serve.run takes a bound deployment (MyDeployment.bind(...)), not {type(app).__name__}"
                        + ("; call .bind() on it first" if isinstance(app, Deployment) else ""))
    nodes: dict[str, Application] = {}
    built: dict[str, tuple] = {}

    def visit(node: Application) -> DeploymentHandle:
        dep_name = node.deployment.name
        seen = nodes.get(dep_name)
        if seen is not None:
            if seen is not node:
                raise ValueError(f"two different bound deployments are named {dep_name!r} in app {app_name!r}; "
                                 f"give one another name with .options(name=...)")
            return DeploymentHandle(dep_name, app_name)
        nodes[dep_name] = node
        built[dep_name] = (tuple(swap(a) for a in node.args), {k: swap(v) for k, v in node.kwargs.items()})
        return DeploymentHandle(dep_name, app_name)

    def swap(value):
        if isinstance(value, Application):
            return visit(value)
        if isinstance(value, Deployment):
            raise TypeError(f"pass deployment {value.name} bound (.bind(...)), not the deployment itself")
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, tuple):
            return tuple(swap(v) for v in value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        return value

    visit(app)
    deployments, codes = {}, {}
    for dep_name, node in nodes.items():
        d, c = node.deployment, node.deployment.config
        args, kwargs = built[dep_name]
        code = cloudpickle.dumps((d.func_or_class, args, kwargs))
        version = c.version or _digest(code, json.dumps([c.ray_actor_options, c.max_ongoing_requests],
                                                        sort_keys=True).encode())
        codes[dep_name] = code
        deployments[dep_name] = {
            "version": str(version), "config_hash": config_hash(c.user_config), "user_config": c.user_config,
            "num_replicas": c.start_replicas,
            "autoscaling": c.autoscaling_config.to_dict() if c.autoscaling_config else None,
            "max_ongoing_requests": c.max_ongoing_requests, "max_queued_requests": c.max_queued_requests,
            "actor_options": dict(c.ray_actor_options),
            "graceful_shutdown_timeout_s": float(c.graceful_shutdown_timeout_s),
            "is_function": not inspect.isclass(d.func_or_class),
        }
    meta = {"name": app_name, "route_prefix": route_prefix, "ingress": app.deployment.name,
            "deployments": deployments}
    return meta, codes

