"""Ray's module name for errors (`ray.exceptions`); the same classes as `p2pcompute.errors`."""

from p2pcompute.errors import *  # noqa: F401,F403
from p2pcompute.errors import (ActorDiedError, GetTimeoutError, ObjectLostError, OwnerDiedError, TaskCancelledError,
                               TaskError, WorkerCrashedError)

# Ray's names for the same errors.
RayError = __import__("p2pcompute.errors", fromlist=["P2PError"]).P2PError
RayTaskError = TaskError
RayActorError = ActorDiedError
TaskCancelledError = TaskCancelledError
GetTimeoutError = GetTimeoutError
WorkerCrashedError = WorkerCrashedError
ObjectLostError = ObjectLostError
OwnerDiedError = OwnerDiedError
