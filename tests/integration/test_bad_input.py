"""Bad input fails at the call site with an InvalidArgumentError (or SerializationError) that names the
problem — never an internal error, and never a broken cluster."""

from __future__ import annotations

import os
import threading

import pytest

import p2pcompute as p2p
from p2pcompute import errors

from itest_util import alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@p2p.remote
def echo(x=None, *rest, **kw):
    return x


@p2p.remote
def returns_a_lock(pid_file):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    return threading.Lock()


@p2p.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, by=1):
        self.n += by
        return self.n


def test_get_of_non_refs(cluster):
    with pytest.raises(errors.InvalidArgumentError, match=r"ObjectRef.*int|int.*ObjectRef"):
        p2p.get(42)
    ref = echo.remote(1)
    with pytest.raises(errors.InvalidArgumentError, match=r"item 1 is a int"):
        p2p.get([ref, 3])
    with pytest.raises(errors.InvalidArgumentError, match="timeout"):
        p2p.get(ref, timeout=-1)
    assert p2p.get(ref, timeout=30) == 1


def test_remote_of_non_callable():
    with pytest.raises(errors.InvalidArgumentError, match="function or (a )?class"):
        p2p.remote(42)
    with pytest.raises(errors.InvalidArgumentError, match="function or (a )?class"):
        p2p.remote(num_cpus=1)(42)


def test_unknown_option_suggests_the_right_name():
    with pytest.raises(errors.InvalidArgumentError, match="num_cpu.*did you mean 'num_cpus'"):
        @p2p.remote(num_cpu=1)
        def f():
            pass
    with pytest.raises(errors.InvalidArgumentError, match="did you mean 'num_cpus'"):
        echo.options(num_cpu=1)
    with pytest.raises(errors.InvalidArgumentError, match="did you mean 'max_restarts'"):
        Counter.options(max_restart=1)
    with pytest.raises(errors.InvalidArgumentError, match="did you mean 'max_retries'"):
        echo.options(max_retry=1)


@pytest.mark.parametrize("options, needle", [
    ({"num_cpus": -1}, "num_cpus"),
    ({"num_cpus": "two"}, "num_cpus must be a number"),
    ({"num_cpus": float("nan")}, "num_cpus"),
    ({"num_gpus": -0.5}, "num_gpus"),
    ({"memory": [1]}, "memory must be a number"),
    ({"resources": {"tpu": -1}}, "tpu"),
    ({"resources": {"tpu": "x"}}, "tpu"),
    ({"resources": ["tpu"]}, "resources must be a dict"),
    ({"resources": {"CPU": 1}}, "num_cpus"),
    ({"max_retries": -2}, "max_retries"),
    ({"num_returns": "2"}, "num_returns"),
])
def test_bad_resource_and_option_values(options, needle):
    with pytest.raises(errors.InvalidArgumentError, match=needle):
        p2p.remote(**options)(lambda: None)
    with pytest.raises(errors.InvalidArgumentError, match=needle):
        echo.options(**options)


def test_unpicklable_argument_names_the_argument(cluster):
    with pytest.raises(errors.SerializationError, match=r"argument 1 \(lock\)"):
        echo.remote(1, threading.Lock())
    with pytest.raises(errors.SerializationError, match=r"keyword argument 'guard'"):
        echo.remote(1, guard=threading.Lock())
    counter = Counter.remote()
    with pytest.raises(errors.SerializationError, match=r"argument 0 \(lock\)"):
        counter.incr.remote(threading.Lock())
    with pytest.raises(errors.SerializationError, match=r"argument 0 \(lock\)"):
        Counter.remote(threading.Lock())
    # Nothing was submitted by the failed calls: the actor saw no call yet.
    assert p2p.get(counter.incr.remote(), timeout=30) == 1


def test_unpicklable_return_value_fails_at_get_and_worker_survives(cluster, tmp_path):
    pid_file = tmp_path / "pid"
    ref = returns_a_lock.remote(str(pid_file))
    with pytest.raises(errors.SerializationError, match="cannot pickle lock") as info:
        p2p.get(ref, timeout=30)
    assert isinstance(info.value, errors.TaskError)
    assert "returns_a_lock" in str(info.value)
    pid = int(pid_file.read_text())
    assert alive([pid]) == [pid], "the worker died from an unpicklable return value"
    assert p2p.get([echo.remote(i) for i in range(4)], timeout=30) == [0, 1, 2, 3]


def test_put_of_an_object_ref(cluster):
    ref = p2p.put(1)
    with pytest.raises(errors.InvalidArgumentError, match="ObjectRef"):
        p2p.put(ref)


def test_wait_argument_errors(cluster):
    refs = [echo.remote(i) for i in range(2)]
    with pytest.raises(errors.InvalidArgumentError, match="num_returns"):
        p2p.wait(refs, num_returns=3)
    with pytest.raises(errors.InvalidArgumentError, match="num_returns"):
        p2p.wait(refs, num_returns=-1)
    with pytest.raises(errors.InvalidArgumentError, match="more than once"):
        p2p.wait([refs[0], refs[0]])
    with pytest.raises(errors.InvalidArgumentError, match="item 1"):
        p2p.wait([refs[0], "nope"])
    with pytest.raises(errors.InvalidArgumentError, match="list"):
        p2p.wait(refs[0])
    assert p2p.get(refs, timeout=30) == [0, 1]


def test_cancel_and_kill_argument_errors(cluster):
    with pytest.raises(errors.InvalidArgumentError, match="ObjectRef"):
        p2p.cancel(42)
    with pytest.raises(errors.InvalidArgumentError, match="ActorHandle"):
        p2p.kill(echo)


def test_calling_actor_class_or_method_directly(cluster):
    with pytest.raises(TypeError, match=r"Counter\.remote\("):
        Counter()
    counter = Counter.remote()
    with pytest.raises(TypeError, match=r"\.incr\.remote\("):
        counter.incr()
    with pytest.raises(AttributeError, match="nope"):
        counter.nope
