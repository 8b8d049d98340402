"""Every error p2pcompute raises on purpose.

One root, `P2PError`. Each class says who is at fault: the caller (`InvalidArgumentError`), the user's own
code (`TaskError`), a process or machine that died (`WorkerCrashedError`, `OwnerDiedError`, ...), or a remote
party that broke the protocol (`RemoteProtocolError`).
"""

from __future__ import annotations

import builtins


class P2PError(Exception):
    """Root of every error p2pcompute raises on purpose."""


# ---- the caller's fault ---------------------------------------------------------------------------------


class InvalidArgumentError(P2PError, ValueError):
    """An argument given to a p2pcompute call is wrong; the message says which and what to do."""


class NotInitializedError(P2PError, RuntimeError):
    """The call needs a running p2pcompute: call `p2pcompute.init()` first."""


class SerializationError(P2PError, TypeError):
    """A value could not be pickled or unpickled; the message names the value."""


# ---- waiting --------------------------------------------------------------------------------------------


class GetTimeoutError(P2PError, TimeoutError):
    """`get` gave up after its `timeout` with the object still not ready."""


class TaskCancelledError(P2PError):
    """The task was cancelled with `cancel()` before it could finish."""


class InfeasibleError(P2PError):
    """No live peer has the resources the task or actor asks for."""


# ---- user code failed -----------------------------------------------------------------------------------


class TaskError(P2PError):
    """An exception raised by user code in a task or actor method.

    The instance `get` raises is also an instance of the original exception's type, so `except ValueError`
    still catches a remote ValueError. `cause` is the original exception when it could be rebuilt here, and
    `remote_traceback` the traceback text from the process that ran the code.
    """

    def __init__(self, message: str = "", *, cause: BaseException | None = None,
                 remote_traceback: str = "", function_name: str = "", pid: int = 0, node_id: str = ""):
        super().__init__(message)
        self.cause = cause
        self.remote_traceback = remote_traceback
        self.function_name = function_name
        self.pid = pid
        self.node_id = node_id

    def __reduce__(self):
        return (_rebuild_task_error, (self.args[0] if self.args else "", self.cause, self.remote_traceback,
                                      self.function_name, self.pid, self.node_id))

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


def _rebuild_task_error(message, cause, remote_traceback, function_name, pid, node_id):
    return make_task_error(message, cause=cause, remote_traceback=remote_traceback,
                           function_name=function_name, pid=pid, node_id=node_id)


_dual_classes: dict[type, type] = {}


def make_task_error(message: str, *, cause: BaseException | None, remote_traceback: str = "",
                    function_name: str = "", pid: int = 0, node_id: str = "") -> TaskError:
    """A TaskError that is also an instance of `type(cause)` whenever Python allows such a class."""
    cls = TaskError
    if cause is not None and not isinstance(cause, TaskError) and isinstance(cause, Exception):
        cls = _dual_class(type(cause))
    try:
        err = cls.__new__(cls)
    except Exception:
        # A cause type whose __new__ insists on arguments: keep the message, lose the type.
        cls = TaskError
        err = cls.__new__(cls)
    # Set the fields without running the cause type's __init__, whose signature we cannot know.
    err.args = (message,)
    err.cause = cause
    err.remote_traceback = remote_traceback
    err.function_name = function_name
    err.pid = pid
    err.node_id = node_id
    return err


def _dual_class(cause_type: type) -> type:
    cls = _dual_classes.get(cause_type)
    if cls is None:
        try:
            cls = type(f"TaskError({cause_type.__name__})", (TaskError, cause_type),
                       {"__module__": __name__, "__str__": TaskError.__str__,
                        "__reduce__": TaskError.__reduce__, "__init__": TaskError.__init__})
        except TypeError:
            # Some types cannot be combined (layout conflicts in C extensions); plain TaskError still works.
            cls = TaskError
        _dual_classes[cause_type] = cls
    return cls


# ---- a process, peer or object was lost -----------------------------------------------------------------


class WorkerCrashedError(P2PError):
    """The worker process running the task died (crash, kill, os._exit) more times than `max_retries`."""


class ActorError(P2PError):
    """Base of errors about an actor."""


class ActorDiedError(ActorError):
    """The actor is dead: it crashed more times than `max_restarts`, or was killed with `kill()`."""


class ActorUnavailableError(ActorError):
    """The actor is restarting; the call was not run. Retry, or set `max_task_retries`."""


class NameTakenError(ActorError, ValueError):
    """Another actor already holds this name in this namespace."""


class ObjectLostError(P2PError):
    """Every copy of the object was lost and it cannot be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that owned this object died, so nothing can rebuild it.

    Each object is owned by the process that created it (the caller of `.remote()` or `put`). Its metadata
    lives there and nowhere else; when that process dies the object is gone for good.
    """


class ArgumentLostError(ObjectLostError):
    """A worker could not read a task's argument: every copy it was told of is gone. The owner rebuilds the
    argument (if it can) and runs the task again; users see this only if nothing can be rebuilt."""

    def __init__(self, message: str = "", object_id: str = ""):
        super().__init__(message)
        self.object_id = object_id

    def __reduce__(self):
        return (ArgumentLostError, (self.args[0] if self.args else "", self.object_id))


class ObjectFreedError(ObjectLostError):
    """The object was already freed (for example with `internal.free`), so it cannot be read."""


class PeerUnavailableError(P2PError, ConnectionError):
    """The local peer could not be reached or refused the connection."""


class AuthenticationError(PeerUnavailableError):
    """The peer refused us: the cluster token is wrong or missing."""


class TableError(P2PError):
    """An operation on the replicated metadata table was refused (the message says why)."""


class ProtocolError(P2PError):
    """Base of wire-protocol errors."""


class RemoteProtocolError(ProtocolError):
    """A remote party sent bytes that are not a valid message. The remote is at fault; we drop the frame."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids. A bug in p2pcompute: please report it."""


__all__ = [name for name, value in list(globals().items())
           if isinstance(value, type) and issubclass(value, builtins.BaseException)] + ["make_task_error"]
