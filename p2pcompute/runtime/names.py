"""Named actors: a name is claimed in the replicated metadata table, so it means one actor cluster-wide.

The creator claims `namespace/name` with the actor's handle record *before* creating the actor. Claims are
linearizable: when two processes race, exactly one claim succeeds; the loser gets the winner's handle
(`get_if_exists=True`) or a `NameTakenError`. A named actor is held alive by its name: it lives until it is
killed or dies for good (or its owner dies), and then its owner releases the name. A named detached actor
whose peer dies is restarted elsewhere and keeps its name (see keeper.py), when it has restarts left.
"""

from __future__ import annotations

from p2pcompute.errors import InvalidArgumentError, NameTakenError

DEFAULT_NAMESPACE = "default"


def key_of(name: str, namespace: str | None) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"an actor name must be a non-empty string, not {name!r}")
    ns = namespace or DEFAULT_NAMESPACE
    if not isinstance(ns, str) or "/" in ns:
        raise InvalidArgumentError(f"a namespace must be a string without '/', not {ns!r}")
    return f"{ns}/{name}"


def handle_from(record: dict):
    from p2pcompute.actor import ActorHandle
    return ActorHandle(record["actor_id"], record["owner"], record["class"], record["methods"],
                       record.get("max_task_retries", 0))


def get_actor(rt, name: str, namespace: str | None):
    key = key_of(name, namespace)
    # Linearizable: an actor created (and announced) just before must be found.
    record = rt.table(("get_name", key), linearizable=True)
    if record is None:
        ns = namespace or DEFAULT_NAMESPACE
        raise InvalidArgumentError(f"no actor named {name!r} in namespace {ns!r} (it was never created, was "
                                   f"killed, or died for good)")
    return handle_from(record)


def record_of(handle) -> dict:
    """The table record of a named actor's handle (what `handle_from` turns back into a handle)."""
    return {"actor_id": handle._actor_id, "owner": handle._owner, "class": handle._class_name,
            "methods": handle._methods, "max_task_retries": handle._max_task_retries}


def create_named(rt, actor_class, name: str, options: dict, args: tuple, kwargs: dict,
                 replaces: dict | None = None):
    """Claim the name, then create the actor. `replaces` (a keeper restarting a detached actor whose peer
    died: {"name_key", "name_record"}) moves the name from the dead incarnation's record instead, and only
    if it still holds it: of two racing restarts one wins, the other creates nothing."""
    key = key_of(name, options.get("namespace")) if replaces is None else replaces["name_key"]
    actor_id = rt.new_id()
    record = {"actor_id": actor_id, "owner": rt.addr, "class": actor_class._cls.__qualname__,
              "methods": actor_class._methods, "max_task_retries": options.get("max_task_retries", 0)}
    if replaces is not None:
        moved, holder = rt.table(("replace_name", key, replaces["name_record"], record))
        if not moved:
            raise NameTakenError(f"the detached actor named {key!r} was restarted or released meanwhile "
                                 f"(the name now holds {holder!r}): not restarting it again")
        return actor_class._create(args, kwargs, actor_id=actor_id, name_key=key, name_record=record)
    claimed, holder = rt.table(("claim", key, record))
    if not claimed:
        if options.get("get_if_exists"):
            return handle_from(holder)
        raise NameTakenError(f"an actor named {name!r} already exists in namespace "
                             f"{options.get('namespace') or DEFAULT_NAMESPACE!r} (class {holder.get('class')}); "
                             f"use get_actor({name!r}) or options(get_if_exists=True)")
    return actor_class._create(args, kwargs, actor_id=actor_id, name_key=key, name_record=record)


def create_detached(rt, actor_class, options: dict, args: tuple, kwargs: dict):
    """Hand the construction to the keeper of our peer, which owns the actor from then on."""
    from p2pcompute import serialization
    from p2pcompute.runtime import messages as rm
    if options.get("name") is not None:
        key_of(options["name"], options.get("namespace"))
    spec_options = {k: v for k, v in options.items() if k != "lifetime"}
    ser = serialization.serialize((actor_class._cls, args, kwargs, spec_options))
    if ser.refs:
        raise InvalidArgumentError("a detached actor's constructor takes plain arguments, not object refs "
                                   "(it outlives the process that owns them); pass refs to a method instead")
    keeper = rt.peer_request(lambda rid: rm.KeeperRequest(rid, rt.addr), timeout_s=60).addr
    reply = rt.peer_request(lambda rid: rm.CreateDetached(rid, rt.addr, ser.to_blob(), rt.job_env),
                            timeout_s=120, to=keeper)
    if reply.error is not None:
        raise serialization.error_from_bytes(reply.error)
    return handle_from(reply.record)
