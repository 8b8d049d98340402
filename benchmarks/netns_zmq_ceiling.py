"""What ZeroMQ alone moves between two network namespaces: the ceiling under a peer-to-peer pull.

A server in one namespace answers "send me N bytes in chunks of C" from a preallocated buffer (copy=False);
a client in the other asks and times until the last byte arrived. Variants, interleaved round by round so a
busy machine hurts all of them alike: CURVE on or off, chunk size, libzmq I/O threads, and how many
connections the chunks are spread over (libzmq serves one connection from one I/O thread).

    sudo python benchmarks/netns_zmq_ceiling.py --mb 100 --rounds 5

The product's pull (`benchmarks/netns_transfer.py`) does the same plus a Python loop on each side, a read
of the store on the holder and a write into it on the reader; if the two come out close, what is left to gain
is inside libzmq (CURVE) or in more cores, not in our code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "integration"))

from netns_util import Fabric, probe  # noqa: E402

PORT = 7800
COMMON = """
import sys, time, zmq
SERVER_SECRET = b"JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6"
CLIENT_SECRET = b"D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"
def keys():
    return zmq.curve_public(SERVER_SECRET), zmq.curve_public(CLIENT_SECRET)
"""
SERVER = COMMON + """
host = sys.argv[1]
buf = bytearray(256 << 20)
socks = []
for curve in (0, 1):
    for io in (1, 2):
        ctx = zmq.Context(io_threads=io)
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0); s.setsockopt(zmq.SNDHWM, 0); s.setsockopt(zmq.RCVHWM, 0)
        if curve:
            spub, cpub = keys()
            s.curve_server = True; s.curve_secretkey = SERVER_SECRET; s.curve_publickey = spub
        s.bind(f"tcp://{host}:{7800 + curve * 10 + io}")
        socks.append(s)
poller = zmq.Poller()
for s in socks:
    poller.register(s, zmq.POLLIN)
view = memoryview(buf)
while True:
    for s, _ in poller.poll():
        ident, req = s.recv_multipart()
        if req == b"quit":
            sys.exit(0)
        offset, length = map(int, req.split())
        s.send_multipart([ident, b"h", view[offset:offset + length]], copy=False)
"""
CLIENT = COMMON + """
import json
host, mb, rounds, variants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
size = mb << 20
clients = {}
def conns(curve, io, nconn):
    key = (curve, io, nconn)
    if key not in clients:
        ctx = zmq.Context(io_threads=io)
        out = []
        for _ in range(nconn):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0); s.setsockopt(zmq.SNDHWM, 0); s.setsockopt(zmq.RCVHWM, 0)
            if curve:
                spub, cpub = keys()
                s.curve_serverkey = spub; s.curve_publickey = cpub; s.curve_secretkey = CLIENT_SECRET
            s.connect(f"tcp://{host}:{7800 + curve * 10 + io}")
            out.append(s)
        clients[key] = out
    return clients[key]
def pull(curve, io, nconn, chunk, window):
    socks = conns(curve, io, nconn)
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    t = time.perf_counter()
    next_off, got, inflight, k = 0, 0, 0, 0
    while got < size:
        while inflight < window and next_off < size:
            n = min(chunk, size - next_off)
            socks[k % nconn].send(f"{next_off} {n}".encode()); k += 1
            next_off += n; inflight += 1
        for s, _ in poller.poll():
            while s.get(zmq.EVENTS) & zmq.POLLIN:
                h, data = s.recv_multipart(copy=False)
                got += len(data.buffer); inflight -= 1
    return time.perf_counter() - t
results = {}
for v in variants:
    pull(*v)  # connect and warm up
for r in range(rounds):
    for v in variants:
        dt = pull(*v)
        results.setdefault(json.dumps(v), []).append(dt)
print("RESULT " + json.dumps(results))
for s in conns(0, 1, 1)[:1]:
    s.send(b"quit")
time.sleep(0.2)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default=None, help="JSON list of [curve, io_threads, connections, chunk, window]")
    ap.add_argument("--env", nargs="*", default=[], help="NAME=VALUE for both processes (e.g. glibc malloc tunables)")
    args = ap.parse_args()
    reason = probe()
    if reason is not None:
        print(f"cannot build network namespaces here: {reason}", file=sys.stderr)
        return 2
    variants = json.loads(args.variants) if args.variants else [
        [0, 1, 1, 8 << 20, 4], [1, 1, 1, 8 << 20, 4], [1, 2, 1, 8 << 20, 4], [1, 2, 2, 8 << 20, 4],
        [1, 1, 1, 1 << 20, 16], [1, 1, 1, 32 << 20, 2]]
    fabric = Fabric(f"p2pz{os.getpid()}", "AA")
    base = tempfile.mkdtemp(prefix="p2p-zmq-ceiling-")
    try:
        fabric.build()
        for name, text in (("server.py", SERVER), ("client.py", CLIENT)):
            with open(os.path.join(base, name), "w") as f:
                f.write(textwrap.dedent(text))
        env = ["env", *args.env]
        server = fabric.start(1, [*env, sys.executable, os.path.join(base, "server.py"), fabric.hosts[1]])
        time.sleep(0.5)
        proc = fabric.run(0, [*env, sys.executable, os.path.join(base, "client.py"), fabric.hosts[1], str(args.mb),
                              str(args.rounds), json.dumps(variants)], timeout_s=600)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        server.kill()
        print(f"{args.mb} MB pulls between two namespaces, best / median of {args.rounds}")
        for v, times in json.loads(line[len("RESULT "):]).items():
            curve, io, nconn, chunk, window = json.loads(v)
            times.sort()
            best, med = times[0], times[len(times) // 2]
            print(f"  curve={curve} io_threads={io} connections={nconn} chunk={chunk >> 20} MiB window={window}: "
                  f"{best * 1000:.1f} / {med * 1000:.1f} ms = {args.mb / 1024 / best:.2f} GiB/s best")
        return 0
    finally:
        fabric.destroy()
        subprocess.run(["rm", "-rf", base])


if __name__ == "__main__":
    sys.exit(main())
