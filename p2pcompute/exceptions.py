"""Ray's module name for errors (`ray.exceptions`); the same classes as `p2pcompute.errors`, plus Ray's names
for them, so `except ray.exceptions.RayActorError` keeps working after the import changes."""

from p2pcompute.errors import *  # noqa: F401,F403
from p2pcompute.errors import (ActorDiedError, ActorError, ActorUnavailableError, GetTimeoutError, NameTakenError,
                               ObjectFreedError, ObjectLostError, OwnerDiedError, P2PError, PeerUnavailableError,
                               TaskCancelledError, TaskError, WorkerCrashedError)

# Ray's names for the same errors.
RayError = P2PError
RayTaskError = TaskError
# Ray's RayActorError is the base of ActorDiedError and ActorUnavailableError: catching it catches an actor
# that died and one that is restarting.
RayActorError = ActorError
ActorAlreadyExistsError = NameTakenError
LocalRayletDiedError = PeerUnavailableError


class RaySystemError(P2PError):
    """Ray's name for an internal system failure. Never raised here (such failures have the specific types
    above); defined so Ray code that catches it imports and runs."""


class NodeDiedError(P2PError):
    """Ray's error for a node that died. Never raised here: a lost peer shows as the error of what was lost
    with it (`OwnerDiedError`, `WorkerCrashedError`, `ActorDiedError`, ...); defined so Ray code imports."""


__all__ = [name for name in dir() if not name.startswith("_") and isinstance(globals()[name], type)]
