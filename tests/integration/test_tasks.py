"""Remote functions: arguments, multiple returns, per-call options, ref arguments, nested tasks and the
runtime context."""

from __future__ import annotations

import os
import time

import pytest

import p2pcompute as p2p
from p2pcompute.object_ref import ObjectRef

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@p2p.remote
def combine(a, b=10, *rest, c=100, **kw):
    return (a, b, rest, c, kw)


@p2p.remote(num_returns=3)
def three(x):
    return x, x + 1, x + 2


@p2p.remote
def pair(x):
    return x, -x


@p2p.remote
def identity(x):
    return x


@p2p.remote
def describe(value):
    """What the callee actually received."""
    return type(value).__name__, value if not isinstance(value, (list, dict)) else None


@p2p.remote
def resolve_nested(container):
    """Refs inside a list/dict arrive as refs; the callee can get them."""
    if isinstance(container, dict):
        assert all(type(v) is ObjectRef for v in container.values()), container
        return {k: p2p.get(v) for k, v in container.items()}
    assert all(type(v) is ObjectRef for v in container), container
    return p2p.get(list(container))


@p2p.remote
def task_name():
    return p2p.get_runtime_context().get_task_name()


def test_args_and_kwargs(cluster):
    assert p2p.get(combine.remote(1), timeout=30) == (1, 10, (), 100, {})
    assert p2p.get(combine.remote(1, 2, 3, 4, c=5, d=6), timeout=30) == (1, 2, (3, 4), 5, {"d": 6})
    assert p2p.get(combine.remote(a="x", b=None), timeout=30) == ("x", None, (), 100, {})


def test_num_returns_gives_one_ref_per_value(cluster):
    refs = three.remote(5)
    assert isinstance(refs, list) and len(refs) == 3
    assert all(type(r) is ObjectRef for r in refs)
    assert len({r.id for r in refs}) == 3
    assert p2p.get(refs, timeout=30) == [5, 6, 7]


def test_options_per_call(cluster):
    a, b = pair.options(num_returns=2).remote(4)
    assert p2p.get([a, b], timeout=30) == [4, -4]
    # The override is per call: the function itself still has one return.
    single = pair.remote(4)
    assert type(single) is ObjectRef
    assert p2p.get(single, timeout=30) == (4, -4)
    assert p2p.get(task_name.options(name="custom-name").remote(), timeout=30) == "custom-name"
    assert p2p.get(task_name.remote(), timeout=30) == "task_name"


def test_top_level_ref_args_are_resolved(cluster):
    put_ref = p2p.put({"k": [1, 2]})
    task_ref = identity.remote(41)
    assert p2p.get(combine.remote(put_ref, b=task_ref), timeout=30) == ({"k": [1, 2]}, 41, (), 100, {})
    assert p2p.get(describe.remote(p2p.put(7)), timeout=30) == ("int", 7)


def test_refs_nested_in_containers_arrive_as_refs(cluster):
    refs = [identity.remote(i) for i in range(3)] + [p2p.put("p")]
    assert p2p.get(resolve_nested.remote(refs), timeout=30) == [0, 1, 2, "p"]
    d = {"a": identity.remote("A"), "b": p2p.put("B")}
    assert p2p.get(resolve_nested.remote(d), timeout=30) == {"a": "A", "b": "B"}


def test_calling_a_remote_function_directly_is_a_type_error(cluster):
    with pytest.raises(TypeError, match=r"identity\.remote\("):
        identity(1)


# ---- nested tasks ---------------------------------------------------------------------------------------


@p2p.remote
def child(i):
    time.sleep(0.05)  # simulated work, so children overlap with their parents
    return i * i


@p2p.remote
def parent(n, base):
    return sum(p2p.get([child.remote(base + i) for i in range(n)]))


def test_task_submits_and_gets_tasks(cluster):
    assert p2p.get(parent.remote(3, 0), timeout=30) == 0 + 1 + 4


def test_nested_tasks_do_not_deadlock_with_more_parents_than_cpus(cluster):
    """4 parents each blocked on 4 children, on 2 CPUs: blocked parents must lend their CPU."""
    start = time.monotonic()
    refs = [parent.remote(4, 4 * p) for p in range(4)]
    got = p2p.get(refs, timeout=40)
    assert got == [sum((4 * p + i) ** 2 for i in range(4)) for p in range(4)]
    assert time.monotonic() - start < 40


@p2p.remote
def context_inside():
    ctx = p2p.get_runtime_context()
    return {"task_id": ctx.get_task_id(), "worker_id": ctx.get_worker_id(), "node_id": ctx.get_node_id(),
            "pid": os.getpid()}


def test_runtime_context(cluster):
    driver_ctx = p2p.get_runtime_context()
    assert driver_ctx.get_task_id() is None
    assert driver_ctx.get_worker_id()
    ref = context_inside.remote()
    inside = p2p.get(ref, timeout=30)
    assert inside["task_id"], inside
    # The task id is the prefix of its return object's id: the same task, not some other one.
    assert ref.id.startswith(inside["task_id"])
    assert inside["worker_id"] and inside["worker_id"] != driver_ctx.get_worker_id()
    assert inside["node_id"] == driver_ctx.get_node_id()
    assert inside["pid"] != os.getpid()
    # Two tasks get two different task ids.
    other = p2p.get(context_inside.remote(), timeout=30)
    assert other["task_id"] != inside["task_id"]
