"""What running code can ask about where it runs: `p2pcompute.get_runtime_context()`."""

from __future__ import annotations

from typing import Any

_worker: dict[str, Any] = {}


def install_worker(client, executor, current_var) -> None:
    _worker["client"] = client
    _worker["executor"] = executor
    _worker["current"] = current_var


class RuntimeContext:
    """Where the calling code runs. Ray's names: `get_node_id()`, `get_worker_id()`, `get_task_id()`, ..."""

    def __init__(self, runtime):
        self._rt = runtime

    @property
    def node_id(self) -> str:
        return self._rt.node_id

    @property
    def worker_id(self) -> str:
        return self._rt.proc_id

    @property
    def job_id(self) -> str:
        return self._rt.job_id

    @property
    def task_id(self) -> str | None:
        var = _worker.get("current")
        cur = var.get() if var is not None else None
        return cur.task_id if cur is not None else None

    @property
    def actor_id(self) -> str | None:
        ex = _worker.get("executor")
        return ex.actor_id if ex is not None else None

    @property
    def task_name(self) -> str | None:
        var = _worker.get("current")
        cur = var.get() if var is not None else None
        return cur.name if cur is not None else None

    def get_node_id(self) -> str:
        return self.node_id

    def get_worker_id(self) -> str:
        return self.worker_id

    def get_job_id(self) -> str:
        return self.job_id

    def get_task_id(self) -> str | None:
        return self.task_id

    def get_actor_id(self) -> str | None:
        return self.actor_id

    def get_task_name(self) -> str | None:
        return self.task_name

    def get(self) -> dict:
        return {"node_id": self.node_id, "worker_id": self.worker_id, "job_id": self.job_id,
                "task_id": self.task_id, "actor_id": self.actor_id}

    def __repr__(self) -> str:
        return f"RuntimeContext({self.get()})"
