"""Attaching a driver to a running peer: `init(address="auto")` or `init(address="host:port", token=...)`."""

from __future__ import annotations

import os
import tempfile

from p2pcompute import object_ref as _refs
from p2pcompute.errors import AuthenticationError, InvalidArgumentError, PeerUnavailableError
from p2pcompute.net import codec
from p2pcompute.net.transport import Context, CurveKeys, Transport
from p2pcompute.runtime import messages as rm
from p2pcompute.runtime.home import Home


def parse_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"address must be 'auto' or 'host:port', not {address!r}")
    return f"tcp://{host}:{port}"


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def route_address(host: str, port: int) -> str:
    """This machine's address on the route to `host`: the source address the kernel picks for a socket
    connected there (a UDP connect sends no packet). That is the address the peer and its workers can
    reach us at, unlike the hostname's address, which is often a loopback one (127.0.1.1 on Debian)."""
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        return s.getsockname()[0]


def advertised_host(peer_host: str, peer_port: int, node_ip: str | None) -> str:
    """The address a driver attached by address tells the cluster to reach it at.

    `node_ip` (init's `_node_ip_address`, or P2P_NODE_IP) wins; otherwise the local end of the route to the
    peer. A loopback address is never advertised to a peer on another machine: its workers would send our
    replies to themselves."""
    if node_ip:
        if _is_loopback(node_ip) and not _is_loopback(peer_host):
            raise InvalidArgumentError(
                f"_node_ip_address / P2P_NODE_IP is the loopback address {node_ip!r}, but the peer at {peer_host} "
                f"is on another machine and could not reach this driver there; give this machine's address on "
                f"the cluster's network")
        return node_ip
    try:
        local = route_address(peer_host, peer_port)
    except OSError as exc:
        raise PeerUnavailableError(f"no route from this machine to the peer at {peer_host}:{peer_port}: {exc}; "
                                   f"set _node_ip_address / P2P_NODE_IP to this machine's address") from None
    return local


def attach(state: dict, address: str, token: str | None, node_ip: str | None = None) -> None:
    from p2pcompute.api import _job_env
    from p2pcompute.runtime.client import ClientRuntime
    if address == "auto":
        home = Home(os.environ.get("P2P_HOME"))
        peer = home.require_running()
        token = token or home.read_token()
        peer_addr = peer["address"]
        peer_id = peer["peer_id"]
        sock_dir = peer["run_dir"]
        bind_host = peer.get("bind_host") or "127.0.0.1"
        advertise = peer.get("advertise_host")
        own_dir = None
    else:
        peer_addr = parse_address(address)
        if not token:
            raise InvalidArgumentError("joining a peer by address needs the cluster token: "
                                       "init(address=..., token=...) or the P2P_TOKEN environment variable")
        own_dir = tempfile.mkdtemp(prefix="p2p-drv-")
        sock_dir = own_dir
        host, _, port = peer_addr[len("tcp://"):].rpartition(":")
        node_ip = node_ip or os.environ.get("P2P_NODE_IP") or None
        if _is_loopback(host) and not node_ip:
            bind_host = advertise = "127.0.0.1"
        else:
            advertise = advertised_host(host, int(port), node_ip)
            # Listen only where the cluster reaches us, not on every interface.
            bind_host = advertise
        peer_id = None
    if not token:
        raise InvalidArgumentError(f"no cluster token: the peer's home has none; pass token=...")
    ctx = Context(CurveKeys.from_token(token))
    try:
        if peer_id is None:
            peer_id = _ask_peer_id(ctx, peer_addr, sock_dir, bind_host, advertise)
        proc_id = f"{peer_id}-d{os.urandom(3).hex()}"
        rt = ClientRuntime(ctx, proc_id=proc_id, kind="driver", job_id=proc_id, job_env=_job_env(),
                           peer_addr=peer_addr, sock_dir=sock_dir, tcp_host=bind_host, advertise_host=advertise)
    except BaseException:
        ctx.close()
        raise
    state.update(runtime=rt, peer=None, ctx=ctx, own_dir=own_dir)
    _refs.install_hooks(rt.ops.append)
    rt.start()


def _ask_peer_id(ctx: Context, peer_addr: str, sock_dir: str, bind_host: str, advertise: str | None,
                 timeout_s: float = 10.0) -> str:
    """One round trip to learn the peer's id: a driver's id starts with its peer's."""
    import time
    boot = Transport(ctx, f"boot{os.getpid()}", "b", ipc_path=os.path.join(sock_dir, f"boot{os.getpid()}"),
                     tcp_host=bind_host, advertise_host=advertise)
    try:
        boot.send(peer_addr, codec.encode(rm.NodesRequest(boot.address, "boot")))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            frames, _, events = boot.poll(100)
            for ev in events:
                if "token" in ev.reason:
                    raise AuthenticationError(f"the peer at {peer_addr} refused us: {ev.reason}")
            for _sender, data in frames:
                reply = codec.decode(data)
                if isinstance(reply, rm.NodesReply) and reply.nodes:
                    return reply.nodes[0]["NodeID"] if len(reply.nodes) == 1 else _self_of(reply.nodes, peer_addr)
        raise PeerUnavailableError(f"no answer from the peer at {peer_addr} within {timeout_s} s "
                                   f"(is it running, and is the token right?)")
    finally:
        boot.close()


def _self_of(nodes: list[dict], peer_addr: str) -> str:
    """The answering peer's id. A peer restarted on the same address is a new peer: its dead predecessor,
    still remembered with that address, must not be taken for it (a driver named after a dead peer has its
    requests refused everywhere)."""
    for node in nodes:
        if node.get("Self"):
            return node["NodeID"]
    matches = [node for node in nodes if peer_addr in str(node.get("Address", "")).split()]
    alive = [node for node in matches if node.get("Alive")]
    return (alive or matches or nodes)[0]["NodeID"]
