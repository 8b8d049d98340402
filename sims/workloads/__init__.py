"""Workloads: what the simulated users do, and the checks that only make sense for what they did.

Each workload is a `Workload` (see base.py): it creates drivers on some peers, submits work over time, and
answers the hooks through which the simulated processes ask what a task does (`on_task_start`,
`on_task_end`), and what happens to references, actors and table clients. `make_workload` builds the one
named by `--workload`.
"""

from __future__ import annotations


def make_workload(cluster, opts):
    from sims.workloads.base import Workload
    from sims.workloads.mixed import MixedWorkload
    from sims.workloads.tasks import TasksWorkload

    name = opts.workload
    if name == "membership":
        return Workload(cluster)
    if name == "tasks":
        return TasksWorkload(cluster)
    if name == "dag":
        from sims.workloads.dag import DagWorkload
        return DagWorkload(cluster)
    if name == "actors":
        from sims.workloads.actors import ActorsWorkload
        return ActorsWorkload(cluster)
    if name == "names":
        from sims.workloads.names import NamesWorkload
        return NamesWorkload(cluster)
    if name == "mixed":
        return MixedWorkload(cluster)
    raise AssertionError(name)
