"""A fork server for workers: a process that has imported the worker code once and forks on demand.

Starting a worker with a fresh interpreter costs a few hundred milliseconds of imports; forking a process
that already holds them costs a few. The zygote is started by the peer, imports the worker module but
creates no threads and no ZeroMQ context (forking either would leave the child with locks held by threads
that do not exist in it), and never imports numpy (OpenBLAS starts threads at import).

Protocol, one JSON object per line: the peer writes `{"id": ..., "argv": [...], "log": path}` to stdin; the
zygote answers `{"id": ..., "pid": n}` once forked and `{"pid": n, "status": code}` when a worker exits (a
negative code is the signal that killed it). The zygote exits when its stdin closes or its parent dies.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys


def _child(argv: list[str], log_path: str, zygote_pid: int, close_fd: int) -> None:
    try:
        os.close(close_fd)
        argv = list(argv) + ["--parent-pid", str(zygote_pid)]
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.stdin = open(0, "r", closefd=False)
        from p2pcompute.runtime import worker
        code = worker.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report and exit; the peer sees the exit code
        import traceback
        traceback.print_exc()
        code = 1
    os._exit(code or 0)


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main() -> int:
    from p2pcompute.runtime.worker import _die_with_parent
    _die_with_parent()
    import p2pcompute.runtime.worker  # noqa: F401 - the point: import once, fork many times
    out = os.fdopen(os.dup(1), "w", buffering=1)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: _poke(wake_w))
    buf = b""
    stdin = sys.stdin.fileno()
    while True:
        try:
            ready, _, _ = select.select([stdin, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
        _reap(out)
        if stdin not in ready:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            return 0
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            try:
                req = json.loads(line)
            except ValueError:
                continue
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(wake_r)
                os.close(wake_w)
                _child(req["argv"], req["log"], me, out.fileno())
            out.write(json.dumps({"id": req["id"], "pid": pid}) + "\n")


def _poke(fd: int) -> None:
    try:
        os.write(fd, b"x")
    except OSError:
        pass


def _reap(out) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        out.write(json.dumps({"pid": pid, "status": _exit_code(status)}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
