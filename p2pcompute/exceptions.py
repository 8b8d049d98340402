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
RaySystemError = P2PError
LocalRayletDiedError = PeerUnavailableError
NodeDiedError = PeerUnavailableError

__all__ = [name for name in dir() if not name.startswith("_") and isinstance(globals()[name], type)]
