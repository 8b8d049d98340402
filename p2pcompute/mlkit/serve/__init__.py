"""p2pcompute.mlkit.serve: model serving with replicas, HTTP on every peer, batching, composition, autoscaling.

    from p2pcompute.mlkit import serve

    @serve.deployment(num_replicas=2)
    class Model:
        async def __call__(self, request):
            return {"y": sum(await request.json())}

    serve.run(Model.bind(), name="m", route_prefix="/m")   # POST http://127.0.0.1:8000/m
    print(serve.get_app_handle("m").remote(...).result())

Ray Serve's shape with no controller: each application's desired state lives in the cluster's replicated
table, and every peer's agent (proxy, routers, reconciler) acts on it. See docs/mlkit/serve.md.
"""

from p2pcompute.mlkit.serve.api import (ApplicationStatus, DeploymentStatus, ServeStatus, delete,
                                        get_app_handle, get_deployment_handle, proxy_urls, run, shutdown, start,
                                        status)
from p2pcompute.mlkit.serve.autoscaling import AutoscalingConfig
from p2pcompute.mlkit.serve.batching import batch
from p2pcompute.mlkit.serve.deployment import Application, Deployment, deployment
from p2pcompute.mlkit.serve.errors import (BackPressureError, BadRequestError, DeploymentFailedError,
                                           DeploymentUnavailableError)
from p2pcompute.mlkit.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator
from p2pcompute.mlkit.serve.http_util import Request
from p2pcompute.mlkit.serve.ingress import ingress
from p2pcompute.mlkit.serve import config_file  # noqa: F401  (serve.config_file.deploy, for the CLI)

__all__ = ["Application", "ApplicationStatus", "AutoscalingConfig", "BackPressureError", "BadRequestError",
           "Deployment", "DeploymentFailedError", "DeploymentHandle", "DeploymentResponse",
           "DeploymentResponseGenerator", "DeploymentStatus", "DeploymentUnavailableError", "Request",
           "ServeStatus", "batch", "config_file", "delete", "deployment", "get_app_handle", "get_deployment_handle", "ingress",
           "proxy_urls", "run", "shutdown", "start", "status"]
