"""Errors: user exceptions keep their type and traceback, crashed workers are retried, the error
hierarchy has one root, and retry_exceptions retries what it names."""

from __future__ import annotations

import ctypes
import inspect
import os

import pytest

import p2pcompute as p2p
from p2pcompute import errors

from itest_util import alive, run_driver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


@p2p.remote
def raise_value_error(x):
    raise ValueError(f"bad value {x}")


@p2p.remote
def raise_custom():
    raise CustomError(7, "seven")


@p2p.remote
def outer_calls_failing_inner():
    return p2p.get(raise_value_error.remote("inner"))


def _count_attempt(path: str) -> int:
    """Append one line to `path` and return how many attempts, this one included, have run."""
    with open(path, "a") as f:
        f.write("x\n")
    with open(path) as f:
        return len(f.read().splitlines())


def _attempts(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@p2p.remote
def exit_on_first_attempt(path):
    if _count_attempt(path) == 1:
        os._exit(1)
    return "survived"


@p2p.remote
def segfault_on_first_attempt(path):
    if _count_attempt(path) == 1:
        ctypes.string_at(0)  # SIGSEGV
    return "survived"


@p2p.remote
def raise_until(path, ok_on_attempt, exc_type):
    n = _count_attempt(path)
    if n < ok_on_attempt:
        raise exc_type(f"attempt {n}")
    return n


@p2p.remote
def echo(x):
    return x


def test_user_exception_is_task_error_and_original_type(cluster):
    ref = raise_value_error.remote(3)
    with pytest.raises(ValueError) as info:
        p2p.get(ref, timeout=30)
    err = info.value
    assert isinstance(err, errors.TaskError)
    assert isinstance(err, errors.P2PError)
    assert "bad value 3" in str(err)
    assert "raise_value_error" in err.remote_traceback
    assert "raise_value_error" in str(err)
    assert isinstance(err.cause, ValueError)
    assert err.pid and err.pid != os.getpid()
    # Plain `except ValueError` works too.
    try:
        p2p.get(ref, timeout=30)
    except ValueError as exc:
        assert exc is not None
    else:
        pytest.fail("get did not raise")


def test_custom_exception_class_keeps_its_fields(cluster):
    with pytest.raises(CustomError) as info:
        p2p.get(raise_custom.remote(), timeout=30)
    err = info.value
    assert isinstance(err, errors.TaskError)
    assert isinstance(err.cause, CustomError)
    assert (err.cause.code, err.cause.detail) == (7, "seven")
    assert "raise_custom" in err.remote_traceback


def test_error_from_nested_task_keeps_type_and_inner_traceback(cluster):
    with pytest.raises(ValueError) as info:
        p2p.get(outer_calls_failing_inner.remote(), timeout=30)
    assert isinstance(info.value, errors.TaskError)
    assert "bad value inner" in str(info.value)
    assert "raise_value_error" in info.value.remote_traceback


@pytest.mark.parametrize("task", [exit_on_first_attempt, segfault_on_first_attempt], ids=["os_exit", "segfault"])
def test_crashed_worker_is_retried(cluster, tmp_path, task):
    counter = tmp_path / "attempts"
    assert p2p.get(task.options(max_retries=2).remote(str(counter)), timeout=40) == "survived"
    assert _attempts(counter) == 2


@pytest.mark.parametrize("task", [exit_on_first_attempt, segfault_on_first_attempt], ids=["os_exit", "segfault"])
def test_crash_without_retries_raises_worker_crashed(cluster, tmp_path, task):
    counter = tmp_path / "attempts"
    with pytest.raises(errors.WorkerCrashedError):
        p2p.get(task.options(max_retries=0).remote(str(counter)), timeout=40)
    assert _attempts(counter) == 1
    # The cluster replaces the dead worker.
    assert p2p.get([echo.remote(i) for i in range(3)], timeout=30) == [0, 1, 2]


def test_every_error_class_derives_from_p2p_error():
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, BaseException) and obj.__module__ == errors.__name__]
    assert len(classes) >= 15
    not_rooted = [c.__name__ for c in classes if not issubclass(c, errors.P2PError)]
    assert not not_rooted
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.P2PError), name


def test_retry_exceptions_true_retries(cluster, tmp_path):
    counter = tmp_path / "attempts"
    ref = raise_until.options(retry_exceptions=True, max_retries=3).remote(str(counter), 3, ValueError)
    assert p2p.get(ref, timeout=30) == 3
    assert _attempts(counter) == 3


def test_retry_exceptions_list_retries_only_listed_types(cluster, tmp_path):
    listed = tmp_path / "listed"
    ref = raise_until.options(retry_exceptions=[ValueError], max_retries=3).remote(str(listed), 2, ValueError)
    assert p2p.get(ref, timeout=30) == 2
    assert _attempts(listed) == 2

    unlisted = tmp_path / "unlisted"
    ref = raise_until.options(retry_exceptions=[KeyError], max_retries=3).remote(str(unlisted), 2, ValueError)
    with pytest.raises(ValueError):
        p2p.get(ref, timeout=30)
    assert _attempts(unlisted) == 1


def test_retry_exceptions_is_bounded_by_max_retries(cluster, tmp_path):
    counter = tmp_path / "attempts"
    ref = raise_until.options(retry_exceptions=True, max_retries=2).remote(str(counter), 100, ValueError)
    with pytest.raises(ValueError, match="attempt 3"):
        p2p.get(ref, timeout=30)
    assert _attempts(counter) == 3


def test_exceptions_are_not_retried_by_default(cluster, tmp_path):
    counter = tmp_path / "attempts"
    with pytest.raises(ValueError):
        p2p.get(raise_until.remote(str(counter), 2, ValueError), timeout=30)
    assert _attempts(counter) == 1


@p2p.remote
def exits(pid_file):
    with open(pid_file, "w") as f:
        f.write(str(os.getpid()))
    raise SystemExit(3)


def test_system_exit_in_task_is_an_error_not_a_crash(cluster, tmp_path):
    pid_file = tmp_path / "pid"
    with pytest.raises(errors.TaskError, match="SystemExit"):
        p2p.get(exits.remote(str(pid_file)), timeout=30)
    pid = int(pid_file.read_text())
    assert alive([pid]) == [pid], "SystemExit in user code must not end the worker"


def test_exception_class_defined_in_driver_main(tmp_path):
    """Classes in a script's __main__ travel by value; the error still arrives as that class."""
    proc = run_driver("""
        import p2pcompute as p2p
        from p2pcompute import errors
        p2p.init(num_cpus=1)

        class ScriptError(Exception):
            pass

        @p2p.remote
        def fails():
            raise ScriptError("from the script")

        try:
            p2p.get(fails.remote(), timeout=30)
        except ScriptError as exc:
            assert isinstance(exc, errors.TaskError)
            assert "from the script" in str(exc) and "fails" in exc.remote_traceback
            print("CAUGHT")
        p2p.shutdown()
    """, tmp_path)
    assert "CAUGHT" in proc.stdout
