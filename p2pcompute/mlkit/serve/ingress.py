"""`@serve.ingress(app)`: a FastAPI (or Starlette) app answers a deployment's HTTP requests.

As in Ray, routes may be methods of the deployment class (`@app.get("/")` on `def root(self)`). In each replica
the app is copied with those routes bound to the replica's instance, then requests run through it in-process
(ASGI), so FastAPI's validation, path parameters and response models all apply.
"""

from __future__ import annotations

import inspect


def ingress(asgi_app):
    """Class decorator: serve the deployment's HTTP traffic through `asgi_app` (FastAPI/Starlette)."""
    def deco(cls):
        if not inspect.isclass(cls):
            raise TypeError("@serve.ingress decorates a deployment class")
        cls.__serve_asgi_app__ = asgi_app
        return cls
    return deco


def bind_app(asgi_app, instance):
    """A copy of `asgi_app` whose routes defined on the instance's class call its bound methods."""
    try:
        from fastapi import FastAPI
        from fastapi.routing import APIRoute
    except ImportError:
        return asgi_app
    if not isinstance(asgi_app, FastAPI):
        return asgi_app
    cls = type(instance)
    bound = FastAPI(title=asgi_app.title)
    for route in asgi_app.routes:
        endpoint = getattr(route, "endpoint", None)
        name = getattr(endpoint, "__name__", None)
        if isinstance(route, APIRoute) and name and getattr(cls, name, None) is endpoint:
            bound.add_api_route(route.path, getattr(instance, name), methods=list(route.methods or ["GET"]),
                                response_model=route.response_model, status_code=route.status_code,
                                name=route.name)
        else:
            bound.router.routes.append(route)
    return bound
