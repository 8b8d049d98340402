"""The keeper: a long-lived process of a peer that owns the detached actors created through that peer.

An actor is owned by the process that creates it, and dies with it. A detached actor must outlive its
creator, so the creator hands its construction to the keeper of its peer (started on first use), which
becomes the owner: it places the actor, restarts it per `max_restarts`, and holds its name. The creator
gets an ordinary handle whose owner is the keeper. The keeper lives as long as its peer.

When that peer dies, a named detached actor with restarts left is restarted by the keeper of the table
leader's peer: the keeper recorded its recipe (pickled class and arguments, the creator's environment) in
the table's `actors` table, and the new keeper moves the name to the new incarnation, which `get_actor`
then returns. Restarts on the same peer (its worker died) are the owner's, as for any actor.

Detached actors live until killed (`kill(handle)`), whoever holds handles or not.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading

from p2pcompute import serialization
from p2pcompute.errors import P2PError
from p2pcompute.runtime import messages as rm

log = logging.getLogger("p2pcompute.keeper")


def _serve(rt, requests: queue.Queue) -> None:
    from p2pcompute.actor import ActorClass
    from p2pcompute.runtime import names
    while True:
        msg = requests.get()
        try:
            env = msg.job_env if isinstance(msg.job_env, dict) else {}
            for path in env.get("sys_path", []):
                if isinstance(path, str) and path not in sys.path:
                    sys.path.append(path)
            cls, args, kwargs, options = serialization.deserialize(msg.spec)
            options = dict(options, lifetime="detached")
            restart = env.get("restart_of") if isinstance(env.get("restart_of"), dict) else None
            if restart is not None:
                # One restart of the budget is spent on this move; the rest goes to the new incarnation.
                left = restart.get("restarts_left", 0)
                options["max_restarts"] = left - 1 if left > 0 else -1
            actor_class = ActorClass(cls, options)
            if options.get("name"):
                handle = names.create_named(rt, actor_class, options["name"], options, args, kwargs,
                                            replaces=restart)
                _keep_recipe(rt, handle, msg.spec, env, options, restart)
            else:
                handle = actor_class._create(args, kwargs, detached=True)
            record = {"actor_id": handle._actor_id, "owner": handle._owner, "class": handle._class_name,
                      "methods": handle._methods, "max_task_retries": handle._max_task_retries}
            reply = rm.DetachedCreated(msg.request_id, record, None)
            rt.keep.append(handle)  # the keeper's own handle: never dropped, so never collected
        except P2PError as exc:
            reply = rm.DetachedCreated(msg.request_id, None, serialization.system_error_bytes(exc))
        except Exception as exc:  # noqa: BLE001 - the creator's class or arguments; their fault, say so
            reply = rm.DetachedCreated(msg.request_id, None, serialization.serialize_error(
                exc, function_name="creating a detached actor", pid=os.getpid(), node_id=rt.node_id))
        rt.ops.append(("send", msg.reply_to, reply))
        rt.waker.wake()


def _keep_recipe(rt, handle, spec: bytes, env: dict, options: dict, restart: dict | None) -> None:
    """Record in the table how to build a named detached actor again, so that when this peer dies the table
    leader's peer restarts it elsewhere (see runtime/table_service.py). Best effort: the actor exists
    already; without the record it only lives as long as this peer."""
    from p2pcompute.runtime import names
    from p2pcompute.runtime.table_service import MAX_SPEC_BYTES
    try:
        if restart is not None:
            rt.table(("actor_delete", restart.get("actor_id", "")))
        restarts = options.get("max_restarts", 0)
        if restarts == 0:
            return
        if len(spec) > MAX_SPEC_BYTES:
            log.warning("detached actor %s: its class and arguments pickle to %d bytes (over %d), so it is "
                        "not restarted on another peer if this one dies", options["name"], len(spec),
                        MAX_SPEC_BYTES)
            return
        key = restart["name_key"] if restart is not None else names.key_of(options["name"],
                                                                           options.get("namespace"))
        env = {k: v for k, v in env.items() if k != "restart_of"}
        rt.table(("actor_put", handle._actor_id, {
            "name_key": key, "name_record": names.record_of(handle), "spec": spec, "job_env": env,
            "restarts_left": restarts if restarts > 0 else -1, "class": handle._class_name}))
    except P2PError as exc:
        log.warning("detached actor %s will not be restarted elsewhere if this peer dies: %s",
                    options.get("name"), exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pcompute-keeper")
    parser.add_argument("--peer", required=True)
    parser.add_argument("--peer-id", required=True)
    parser.add_argument("--sock-dir", required=True)
    parser.add_argument("--tcp-host", default=None)
    parser.add_argument("--advertise-host", default=None)
    args = parser.parse_args(argv)
    from p2pcompute.runtime.worker import _die_with_parent
    _die_with_parent()
    logging.basicConfig(level=os.environ.get("P2P_LOG_LEVEL", "WARNING"))
    from p2pcompute import object_ref
    from p2pcompute.net.transport import Context, CurveKeys
    from p2pcompute.runtime.client import ClientRuntime
    from p2pcompute.state import STATE
    token = os.environ.pop("P2P_CLUSTER_TOKEN", None)
    ctx = Context(CurveKeys.from_token(token) if token and args.tcp_host else None)
    proc_id = f"{args.peer_id}-k{os.getpid()}"
    rt = ClientRuntime(ctx, proc_id=proc_id, kind="driver", job_id=proc_id,
                       job_env={"sys_path": list(sys.path), "cwd": os.getcwd(), "entry": "keeper"},
                       peer_addr=args.peer, sock_dir=args.sock_dir, tcp_host=args.tcp_host,
                       advertise_host=args.advertise_host)
    rt.keep = []
    rt.is_keeper = True
    requests: queue.Queue = queue.Queue()
    rt.handlers[rm.CreateDetached] = requests.put
    from p2pcompute.runtime import task_events
    task_events.install(rt)  # answers state requests (the detached actors it owns)
    STATE.update(runtime=rt, worker=True)
    object_ref.install_hooks(rt.ops.append)
    rt.start()
    rt.ops.append(("send", args.peer, rm.KeeperAddress("keeper", rt.addr)))
    rt.waker.wake()
    threading.Thread(target=_serve, args=(rt, requests), daemon=True, name="p2p-keeper").start()
    rt.wait_stopped()
    return 0


if __name__ == "__main__":
    sys.exit(main())
