"""`@serve.ingress(app)`: a FastAPI (or Starlette) app answers a deployment's HTTP requests.

As in Ray, routes may be methods of the deployment class (`@app.get("/")` on `def root(self)`). The decorator
records the FastAPI app's routes (an app object itself does not pickle reliably); each replica rebuilds the
app with the routes defined on its class bound to its instance, and runs requests through it in-process
(ASGI), so FastAPI's validation, path parameters and response models apply.
"""

from __future__ import annotations

import inspect

_ROUTE_FIELDS = ("path", "methods", "status_code", "response_model", "name")


def ingress(asgi_app):
    """Class decorator: serve the deployment's HTTP traffic through `asgi_app` (FastAPI, or any ASGI app)."""
    def deco(cls):
        if not inspect.isclass(cls):
            raise TypeError("@serve.ingress decorates a deployment class")
        routes = _fastapi_routes(asgi_app)
        if routes is not None:
            cls.__serve_asgi_app__ = ("fastapi", getattr(asgi_app, "title", "FastAPI"), routes)
        else:
            cls.__serve_asgi_app__ = ("asgi", asgi_app)
        return cls
    return deco


def _fastapi_routes(asgi_app):
    try:
        from fastapi import FastAPI
        from fastapi.routing import APIRoute
    except ImportError:
        return None
    if not isinstance(asgi_app, FastAPI):
        return None
    out = []
    for route in asgi_app.routes:
        if isinstance(route, APIRoute):
            fields = {f: getattr(route, f) for f in _ROUTE_FIELDS}
            fields["methods"] = sorted(fields["methods"] or ["GET"])
            out.append((route.endpoint, fields))
    return out


def bind_app(recorded, instance):
    """The ASGI app for one replica: routes defined on the instance's class call its bound methods."""
    if recorded[0] == "asgi":
        return recorded[1]
    from fastapi import FastAPI
    _, title, routes = recorded
    cls = type(instance)
    app = FastAPI(title=title)
    for endpoint, fields in routes:
        name = getattr(endpoint, "__name__", "")
        if getattr(cls, name, None) is endpoint:
            endpoint = getattr(instance, name)
        path = fields.pop("path")
        app.add_api_route(path, endpoint, **fields)
    return app
