"""Errors of mlkit.serve. Each says what went wrong and what to do; the proxy maps them to HTTP codes."""

from __future__ import annotations

from p2pcompute.errors import P2PError


class BackPressureError(P2PError):
    """Every replica is at max_ongoing_requests and the router's queue is at max_queued_requests (HTTP 503)."""

    status_code = 503


class DeploymentUnavailableError(P2PError):
    """No replica of the deployment could take the request in time (none running, or all gone; HTTP 503)."""

    status_code = 503


class BadRequestError(ValueError):
    """The request could not be understood (for example its body is not the JSON it should be; HTTP 400)."""

    status_code = 400


class DeploymentFailedError(P2PError, RuntimeError):
    """A deployment's replicas could not start (the constructor or reconfigure raised); the message says why."""
