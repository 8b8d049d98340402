"""Declarative deployment: a YAML (or JSON) file of applications, as Ray Serve's config files.

    http_options: {host: 127.0.0.1, port: 8000}
    proxy_location: EveryNode
    applications:
      - name: clf
        route_prefix: /clf
        import_path: my_models:app          # module:attribute, a bound deployment or a function returning one
        args: {path: model.npz}             # passed to that function when it is one
        deployments:                        # per-deployment option overrides, by deployment name
          - name: Classifier
            num_replicas: 2
            user_config: {threshold: 0.5}
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from p2pcompute.mlkit.serve.deployment import Application

_APP_KEYS = {"name", "route_prefix", "import_path", "args", "deployments"}
_TOP_KEYS = {"http_options", "proxy_location", "applications"}


def load(path: str) -> dict:
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        config = json.loads(text)
    else:
        try:
            import yaml
        except ImportError:
            raise ImportError("reading a YAML serve config needs PyYAML: pip install 'p2pcompute[serve]'") from None
        config = yaml.safe_load(text)
    if not isinstance(config, dict) or not isinstance(config.get("applications"), list):
        raise ValueError(f"{path}: a serve config is a mapping with an 'applications' list")
    unknown = sorted(set(config) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {sorted(_TOP_KEYS)}")
    for i, app in enumerate(config["applications"]):
        if not isinstance(app, dict) or "import_path" not in app:
            raise ValueError(f"{path}: application #{i} needs an import_path (module:attribute)")
        bad = sorted(set(app) - _APP_KEYS)
        if bad:
            raise ValueError(f"{path}: application #{i}: unknown key(s) {bad}; known: {sorted(_APP_KEYS)}")
    return config


def build_app(spec: dict, base_dir: str) -> Application:
    module_name, _, attr = spec["import_path"].partition(":")
    if not attr:
        raise ValueError(f"import_path {spec['import_path']!r} must be 'module:attribute'")
    if base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    target = getattr(importlib.import_module(module_name), attr)
    app = target if isinstance(target, Application) else target(**(spec.get("args") or {}))
    if not isinstance(app, Application):
        raise TypeError(f"{spec['import_path']} is not a bound deployment (X.bind(...)) nor a function returning one")
    overrides = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in spec.get("deployments") or []}
    if overrides:
        _override(app, overrides, set())
        missing = sorted(set(overrides) - _names(app))
        if missing:
            raise ValueError(f"config names deployment(s) {missing} not in the application ({sorted(_names(app))})")
    return app


def _children(app: Application):
    def find(v):
        if isinstance(v, Application):
            return [v]
        if isinstance(v, (list, tuple)):
            return [a for x in v for a in find(x)]
        if isinstance(v, dict):
            return [a for x in v.values() for a in find(x)]
        return []
    return find(list(app.args)) + find(list(app.kwargs.values()))


def _override(app: Application, overrides: dict, seen: set) -> None:
    if id(app) in seen:
        return
    seen.add(id(app))
    opts = overrides.get(app.deployment.name)
    if opts:
        app.deployment = app.deployment.options(**opts)
    for child in _children(app):
        _override(child, overrides, seen)


def _names(app: Application) -> set:
    return {app.deployment.name} | {n for c in _children(app) for n in _names(c)}


def deploy(path: str) -> list[str]:
    """Start serving (if needed) and run every application of the config file; returns their names."""
    from p2pcompute.mlkit.serve import api
    config = load(path)
    api.start(config.get("http_options"), proxy_location=config.get("proxy_location", "EveryNode"))
    names = []
    base_dir = os.path.dirname(os.path.abspath(path))
    for spec in config["applications"]:
        name = spec.get("name", "default")
        api.run(build_app(spec, base_dir), name=name, route_prefix=spec.get("route_prefix", "/"))
        names.append(name)
    return names
