"""A second driver joins an embedded peer on this machine through the address the first `init()` returned.

The embedded peer listens on a Unix socket in a private (0700) session directory, so only the same user can
join, and no cluster token is needed: the socket's permissions are the credential. The joining driver is an
ordinary client of that peer; the peer still lives and dies with the driver that started it.
"""

from __future__ import annotations

import os

from p2pcompute import object_ref as _refs
from p2pcompute.errors import InvalidArgumentError, PeerUnavailableError
from p2pcompute.net.transport import Context


def socket_path(address: str) -> str:
    for part in address.split():
        if part.startswith("ipc://"):
            return part[len("ipc://"):]
    raise InvalidArgumentError(f"not a local peer address: {address!r}")


def attach_embedded(state: dict, address: str) -> None:
    from p2pcompute.api import _job_env
    from p2pcompute.runtime.attach import _ask_peer_id
    from p2pcompute.runtime.client import ClientRuntime
    sock = socket_path(address)
    if not os.path.exists(sock):
        raise PeerUnavailableError(f"no local peer at {address!r}: the driver that started it has exited "
                                   f"(or the address is from another machine)")
    session_dir = os.path.dirname(sock)
    ctx = Context()
    try:
        peer_id = _ask_peer_id(ctx, address, session_dir, None, None)
        proc_id = f"{peer_id}-d{os.urandom(3).hex()}"
        rt = ClientRuntime(ctx, proc_id=proc_id, kind="driver", job_id=proc_id, job_env=_job_env(),
                           peer_addr=address, sock_dir=session_dir)
    except BaseException:
        ctx.close()
        raise
    state.update(runtime=rt, peer=None, ctx=ctx, own_dir=None)
    _refs.install_hooks(rt.ops.append)
    rt.start()
