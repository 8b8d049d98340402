"""Call-site checks, without a cluster: argument binding to signatures, option types (TypeError vs
ValueError, as Ray raises them), `@remote()` misuse, the user's class seen through `@remote`, and the error
tree Ray code catches. All of it must fail (or work) before anything is submitted."""

from __future__ import annotations

import inspect
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import p2pcompute as p2p
from p2pcompute import errors, exceptions, signatures


# ---- binding arguments to signatures -------------------------------------------------------------------


def f_plain(a, b=1):
    return a + b


def f_kwonly(a, *, c):
    return a + c


def f_var(a, *rest, **kw):
    return a


def f_posonly(a, /, b=2):
    return a


CALLS = [((), {}), ((1,), {}), ((1, 2), {}), ((1, 2, 3), {}), ((1,), {"b": 2}), ((1,), {"c": 3}),
         ((), {"a": 1}), ((1,), {"zz": 1}), ((1, 2), {"a": 1}), ((), {"a": 1, "c": 2})]


@pytest.mark.parametrize("fn", [f_plain, f_kwonly, f_var, f_posonly])
@pytest.mark.parametrize("args, kwargs", CALLS)
def test_check_agrees_with_python(fn, args, kwargs):
    """Our check (with its fast path) accepts exactly the calls Python would accept."""
    shape = signatures.of_function(fn)
    try:
        fn(*args, **kwargs)
        python_ok = True
    except TypeError:
        python_ok = False
    try:
        shape.check(args, kwargs, fn.__name__)
        ours_ok = True
    except TypeError as exc:
        ours_ok = False
        assert fn.__name__ in str(exc) and "cannot take these arguments" in str(exc)
    assert ours_ok == python_ok


@settings(max_examples=300, deadline=None)
@given(n_pos=st.integers(0, 3), n_default=st.integers(0, 2), var=st.booleans(), kwonly=st.booleans(),
       kwonly_default=st.booleans(), posonly=st.booleans(), varkw=st.booleans(), n_args=st.integers(0, 6),
       kw_names=st.lists(st.sampled_from("abcdexyz"), max_size=3, unique=True))
def test_plain_data_signature_checks_like_the_original(n_pos, n_default, var, kwonly, kwonly_default, posonly,
                                                       varkw, n_args, kw_names):
    """A signature sent as plain data (in an actor handle) accepts and refuses the same calls, and both
    agree with Python's own binding (the fast paths included)."""
    P = inspect.Parameter
    params = [P(n, P.POSITIONAL_ONLY if posonly and i == 0 else P.POSITIONAL_OR_KEYWORD)
              for i, n in enumerate("abc"[:n_pos])]
    params += [P(n, P.POSITIONAL_OR_KEYWORD, default=0) for n in "de"[:n_default]]
    if var:
        params.append(P("rest", P.VAR_POSITIONAL))
    if kwonly:
        params.append(P("x", P.KEYWORD_ONLY, default=0) if kwonly_default else P("x", P.KEYWORD_ONLY))
    if varkw:
        params.append(P("kw", P.VAR_KEYWORD))
    original = signatures.shape_of(inspect.Signature(params))
    travelled = signatures.from_plain(pickle.loads(pickle.dumps(signatures.to_plain(original))))
    args, kwargs = tuple(range(n_args)), {k: 1 for k in kw_names}

    def accepts(shape):
        try:
            shape.check(args, kwargs, "f")
            return True
        except TypeError:
            return False

    assert accepts(original) == accepts(travelled)
    try:
        inspect.Signature(params).bind(*args, **kwargs)
        expected = True
    except TypeError:
        expected = False
    assert accepts(original) == expected


class Service:
    LIMIT = 3

    def __init__(self, x, y=0):
        self.x = x

    def add(self, k, *, times=1):
        return self.x + k * times

    @staticmethod
    def double(v):
        return 2 * v

    @classmethod
    def make(cls, x):
        return cls.remote(x)


def test_method_and_constructor_shapes_leave_out_self():
    assert str(signatures.of_constructor(Service).signature) == "(x, y=0)"
    assert str(signatures.of_method(Service, "add").signature) == "(k, *, times=1)"
    assert str(signatures.of_method(Service, "double").signature) == "(v)"
    assert str(signatures.of_method(Service, "make").signature) == "(x)"
    assert str(signatures.of_constructor(type("Empty", (), {})).signature) == "()"


def test_remote_calls_are_checked_before_anything_is_submitted():
    """TypeError at .remote(), whether or not a runtime exists (none is needed to refuse the call)."""
    task = p2p.remote(f_kwonly)
    with pytest.raises(TypeError, match="missing a required argument: 'c'"):
        task.remote(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        task.remote(1, 2, c=3)
    actor_class = p2p.remote(Service)
    with pytest.raises(TypeError, match=r"Service\.remote\(x, y=0\).*missing a required argument: 'x'"):
        actor_class.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        actor_class.remote(1, z=2)


# ---- option and argument types -------------------------------------------------------------------------


@pytest.mark.parametrize("options, kind", [
    ({"max_retries": 0.5}, TypeError), ({"num_returns": "x"}, TypeError), ({"num_cpus": "2"}, TypeError),
    ({"resources": ["tpu"]}, TypeError), ({"resources": {"tpu": "1"}}, TypeError), ({"name": 3}, TypeError),
    ({"retry_exceptions": "yes"}, TypeError), ({"scheduling_strategy": 3}, TypeError),
    ({"max_retries": -2}, ValueError), ({"num_returns": -1}, ValueError), ({"num_cpus": -1}, ValueError),
    ({"num_gpus": float("inf")}, ValueError), ({"scheduling_strategy": "FASTEST"}, ValueError),
])
def test_option_errors_have_rays_types(options, kind):
    with pytest.raises(kind) as info:
        p2p.remote(**options)(f_plain)
    assert isinstance(info.value, errors.InvalidArgumentError)  # existing `except InvalidArgumentError` holds
    if kind is ValueError:
        assert not isinstance(info.value, TypeError)


def test_actor_option_types():
    with pytest.raises(TypeError, match="max_restarts"):
        p2p.remote(Service).options(max_restarts=1.5)
    with pytest.raises(ValueError, match="max_concurrency"):
        p2p.remote(Service).options(max_concurrency=0)
    with pytest.raises(TypeError, match="num_returns"):
        p2p.method(num_returns="2")


def test_remote_with_empty_brackets_is_an_error():
    with pytest.raises(TypeError, match=r"@remote\(\) needs options"):
        @p2p.remote()
        def g():
            pass
    with pytest.raises(TypeError):
        p2p.remote(1, 2)


# ---- the user's class through @remote ------------------------------------------------------------------


def test_actor_class_keeps_the_users_class_reachable():
    A = p2p.remote(Service)
    assert A.LIMIT == 3
    assert A.double(4) == 8
    assert A.make.__self__ is A  # a factory's cls.remote(...) starts an actor
    assert {"LIMIT", "double", "make", "add", "remote", "options"} <= set(dir(A))
    assert A.__ray_actor_class__ is Service
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        A.nope
    with pytest.raises(TypeError, match=r"Service\.remote\("):
        A(1)

    class Sub(A):  # subclasses the user's class, which can be made an actor again
        def add(self, k, *, times=1):
            return -k

    assert Sub.__mro__[1] is Service
    assert Sub(1).add(5) == -5
    assert p2p.remote(Sub).LIMIT == 3


# ---- the error tree ------------------------------------------------------------------------------------


def test_ray_actor_error_catches_died_and_unavailable():
    for cls in (errors.ActorDiedError, errors.ActorUnavailableError):
        with pytest.raises(exceptions.RayActorError):
            raise cls("actor Foo (0123456789ab-w3.1f) was lost")
    assert not issubclass(errors.NameTakenError, exceptions.RayActorError)
    assert issubclass(exceptions.ActorAlreadyExistsError, ValueError)


def test_errors_carry_ids_across_pickling():
    died = pickle.loads(pickle.dumps(errors.ActorDiedError("actor Foo (0123456789ab-w3.1f) was killed")))
    assert died.actor_id == "0123456789ab-w3.1f"
    assert errors.ActorUnavailableError("restarting", actor_id="0123456789ab-d12.4").actor_id == "0123456789ab-d12.4"
    cancelled = pickle.loads(pickle.dumps(errors.TaskCancelledError("task f (0123456789ab-dab12.2) was cancelled")))
    assert cancelled.task_id == "0123456789ab-dab12.2"


def test_constructor_failure_is_an_actor_died_error_of_the_original_type():
    err = errors.make_actor_init_error("0123456789ab-d1.3", "Service", KeyError("k"),
                                       "Traceback (most recent call last):\n  line 3, in __init__\nKeyError: 'k'")
    back = pickle.loads(pickle.dumps(err))
    for e in (err, back):
        assert isinstance(e, exceptions.RayActorError) and isinstance(e, errors.ActorDiedError)
        assert isinstance(e, KeyError) and isinstance(e, errors.TaskError)
        assert e.actor_init_failed and e.actor_id == "0123456789ab-d1.3"
        assert "in __init__" in str(e) and "in __init__" in e.traceback_str
        assert isinstance(e.cause, KeyError)
