"""p2pcompute: Ray-style distributed tasks, actors and objects for Python, with no head node.

    import p2pcompute as p2p
    p2p.init()

    @p2p.remote
    def square(x):
        return x * x

    print(p2p.get([square.remote(i) for i in range(4)]))
"""

from p2pcompute import errors, exceptions, internal, kv
from p2pcompute.actor import ActorClass, ActorHandle, method
from p2pcompute.api import (available_resources, cancel, cluster_resources, get, get_actor, get_gpu_ids,
                            get_runtime_context,
                            init, is_initialized, kill, nodes, put, remote, shutdown, wait)
from p2pcompute.object_ref import ObjectID, ObjectRef
from p2pcompute.dashboard.timeline import timeline

__version__ = "0.1.0"

__all__ = ["ActorClass", "ActorHandle", "ObjectID", "ObjectRef", "available_resources", "cancel", "cluster_resources",
           "errors", "exceptions", "internal", "kv", "get", "get_actor", "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "kill",
           "method", "nodes", "put", "remote", "shutdown", "timeline", "wait", "__version__"]
