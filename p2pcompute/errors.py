"""Every error p2pcompute raises on purpose.

One root, `P2PError`. Each class says who is at fault: the caller (`InvalidArgumentError`), the user's own
code (`TaskError`), a process or machine that died (`WorkerCrashedError`, `OwnerDiedError`, ...), or a remote
party that broke the protocol (`RemoteProtocolError`).
"""

from __future__ import annotations

import builtins
import re


class P2PError(Exception):
    """Root of every error p2pcompute raises on purpose."""


# Object, task and actor ids are `<peer id>-<process kind><n>.<n>` (see ids.py). Errors raised deep in the
# runtime name the id in their message; the attribute Ray code reads (`err.actor_id`, `err.task_id`) is
# taken from there when the raiser did not pass it.
_ID = r"[0-9a-f]{12}-[a-z][0-9a-z]*\.[0-9a-f]+"
_ID_RE = re.compile(rf"\b{_ID}\b")
# "actor <id> ..." or "actor <ClassName> (<id>) ...", not "actor call <Class.method> (<task id>)".
_ACTOR_ID_RE = re.compile(rf"\bactor (?:[A-Za-z_][\w.]* )?\(?({_ID})\b")


def _id_in(message: str) -> str | None:
    found = _ID_RE.search(message) if isinstance(message, str) else None
    return found.group(0) if found else None


def _actor_id_in(message: str) -> str | None:
    found = _ACTOR_ID_RE.search(message) if isinstance(message, str) else None
    return found.group(1) if found else None


# ---- the caller's fault ---------------------------------------------------------------------------------


class InvalidArgumentError(P2PError, ValueError):
    """An argument given to a p2pcompute call is wrong; the message says which and what to do.

    A value out of range is a `ValueError`, as in Ray; a value of the wrong type raises the subclass
    `InvalidArgumentTypeError`, which is also a `TypeError`.
    """


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (`max_retries=0.5`, `wait(ref)` for `wait([ref])`): a `TypeError`, as
    Ray raises, and still an `InvalidArgumentError`."""


class NotInitializedError(P2PError, RuntimeError):
    """The call needs a running p2pcompute: call `p2pcompute.init()` first."""


class SerializationError(P2PError, TypeError):
    """A value could not be pickled or unpickled; the message names the value."""


# ---- waiting --------------------------------------------------------------------------------------------


class GetTimeoutError(P2PError, TimeoutError):
    """`get` gave up after its `timeout` with the object still not ready."""


class TaskCancelledError(P2PError):
    """The task was cancelled with `cancel()` before it could finish. `task_id` names it, as in Ray."""

    def __init__(self, message: str = "", task_id: str | None = None):
        super().__init__(message)
        self.task_id = task_id if task_id is not None else _id_in(message)


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

    # Ray's names for the same fields (`RayTaskError.traceback_str`, `.actor_id`).
    @property
    def traceback_str(self) -> str:
        return self.remote_traceback

    actor_id = None


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
    """Base of errors about an actor: the one Ray code catches as `RayActorError` (an actor that died, or
    one unavailable while it restarts). `actor_id` names the actor."""

    actor_init_failed = False  # Ray's flag: the actor died because its constructor raised

    def __init__(self, message: str = "", actor_id: str | None = None):
        super().__init__(message)
        self.actor_id = actor_id if actor_id is not None else _actor_id_in(message)

    @property
    def error_msg(self) -> str:
        return str(self)


class ActorDiedError(ActorError):
    """The actor is dead: it crashed more times than `max_restarts`, was killed with `kill()`, left with
    `exit_actor()`, or its constructor raised (then the error is also an instance of the constructor's
    exception type and a `TaskError`, with the constructor's traceback)."""


class ActorUnavailableError(ActorError):
    """The actor is restarting; the call was not run. Retry, or set `max_task_retries`."""


class NameTakenError(P2PError, ValueError):
    """Another actor already holds this name in this namespace (Ray raises a `ValueError` here too)."""


def make_actor_init_error(actor_id: str, class_name: str, cause: BaseException | None, remote_traceback: str,
                          pid: int = 0, node_id: str = "") -> ActorDiedError:
    """The error of every call to an actor whose constructor raised: an `ActorDiedError` (what Ray raises),
    also a `TaskError` and an instance of the constructor's exception type, so code written either way
    catches it. The message carries the constructor's traceback."""
    message = (f"actor {class_name} ({actor_id}) died because its constructor raised "
               f"{type(cause).__name__ if cause is not None else 'an error'}:\n{remote_traceback.rstrip()}")
    cls = _ActorInitFailed
    if cause is not None and isinstance(cause, Exception) and not isinstance(cause, P2PError):
        cls = _init_failed_class(type(cause))
    try:
        err = cls.__new__(cls)
    except Exception:
        cls = _ActorInitFailed
        err = cls.__new__(cls)
    err.args = (message,)
    err.actor_id = actor_id
    err.cause = cause
    err.remote_traceback = remote_traceback
    err.function_name = f"{class_name}.__init__"
    err.pid = pid
    err.node_id = node_id
    err._class_name = class_name
    return err


class _ActorInitFailed(ActorDiedError, TaskError):
    actor_init_failed = True

    def __init__(self, message: str = "", **_):
        ActorDiedError.__init__(self, message)

    def __str__(self) -> str:
        return self.args[0] if self.args else ""

    def __reduce__(self):
        import cloudpickle
        try:
            cause_bytes = cloudpickle.dumps(self.cause)
        except Exception:
            cause_bytes = b""
        return (_rebuild_actor_init_error, (self.actor_id, getattr(self, "_class_name", ""), cause_bytes,
                                            self.remote_traceback, self.pid, self.node_id))


def _rebuild_actor_init_error(actor_id, class_name, cause_bytes, remote_traceback, pid, node_id):
    import pickle
    cause = None
    if cause_bytes:
        try:
            cause = pickle.loads(cause_bytes)
        except Exception:
            cause = None
    return make_actor_init_error(actor_id, class_name, cause, remote_traceback, pid, node_id)


_init_failed_classes: dict[type, type] = {}


def _init_failed_class(cause_type: type) -> type:
    cls = _init_failed_classes.get(cause_type)
    if cls is None:
        try:
            cls = type(f"ActorDiedError({cause_type.__name__})", (_ActorInitFailed, cause_type),
                       {"__module__": __name__, "__str__": _ActorInitFailed.__str__,
                        "__reduce__": _ActorInitFailed.__reduce__, "__init__": _ActorInitFailed.__init__})
        except TypeError:
            cls = _ActorInitFailed
        _init_failed_classes[cause_type] = cls
    return cls


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
           if isinstance(value, type) and issubclass(value, builtins.BaseException)
           and not name.startswith("_")] + ["make_task_error", "make_actor_init_error"]
