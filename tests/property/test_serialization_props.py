"""Serialization round trips (hypothesis): nested containers with refs, numpy arrays, exceptions."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pcompute import errors, serialization
from p2pcompute.object_ref import ObjectRef, install_hooks

ref_ids = st.builds(lambda n, owner: (f"{owner}.{n}", f"ipc:///tmp/{owner}"),
                    st.integers(1, 10**6), st.sampled_from(["aaaa", "bbbb", "cccc"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                    st.binary(max_size=40))


def values(leaves):
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4)), max_leaves=12)


@pytest.fixture(autouse=True)
def no_runtime_hooks():
    install_hooks(None)
    yield
    install_hooks(None)


def _refs_in(value, out):
    if isinstance(value, ObjectRef):
        out.add((value.id, value.owner_address()))
    elif isinstance(value, (list, tuple)):
        for v in value:
            _refs_in(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _refs_in(v, out)
    return out


@settings(max_examples=150, deadline=None)
@given(values(st.one_of(scalars, ref_ids.map(lambda p: ObjectRef(*p)))))
def test_nested_values_with_refs_round_trip_and_refs_are_recorded(value):
    ser = serialization.serialize(value)
    assert set(ser.refs) == _refs_in(value, set())
    back = serialization.deserialize(ser.to_blob())
    assert back == value


dtypes = st.sampled_from([np.int8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64,
                          np.complex64, np.bool_])


@settings(max_examples=120, deadline=None)
@given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, max_side=7)), st.booleans())
def test_numpy_arrays_of_many_dtypes_and_shapes_round_trip(arr, fortran):
    if fortran:
        arr = np.asfortranarray(arr)
    ser = serialization.serialize({"a": arr, "view": arr[::2] if arr.ndim else arr})
    back = serialization.deserialize(ser.to_blob(), writable=True)
    np.testing.assert_array_equal(back["a"], arr)
    assert back["a"].dtype == arr.dtype and back["a"].shape == arr.shape
    back["a"][...] = 0 if arr.size else back["a"]  # writable copies can be modified


def test_large_buffers_travel_out_of_band_and_are_mapped_not_copied():
    arr = np.arange(1_000_000, dtype=np.float64)
    ser = serialization.serialize(arr)
    assert len(ser.meta) < 1000 and len(ser.buffers) == 1  # the data is not in the pickle stream
    blob = memoryview(bytearray(ser.to_blob())).toreadonly()
    back = serialization.deserialize(blob)
    assert not back.flags.writeable
    assert np.shares_memory(back, np.frombuffer(blob, dtype=np.uint8))
    np.testing.assert_array_equal(back, arr)


class CustomError(Exception):
    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([ValueError, KeyError, ZeroDivisionError, RuntimeError, CustomError, OSError]),
       st.text(max_size=30))
def test_exceptions_come_back_as_task_errors_that_are_also_the_original_type(exc_type, text):
    exc = exc_type(7, text) if exc_type is CustomError else exc_type(text)
    try:
        raise exc
    except BaseException as caught:
        blob = serialization.serialize_error(caught, function_name="f", pid=123, node_id="node")
    err = serialization.error_from_bytes(blob)
    assert isinstance(err, errors.TaskError) and isinstance(err, exc_type)
    assert isinstance(err, errors.P2PError)
    assert "raise exc" in err.remote_traceback and "f failed" in str(err)
    if exc_type is CustomError:
        assert err.cause.code == 7
    again = pickle.loads(pickle.dumps(err))  # errors survive another trip (nested tasks re-raise them)
    assert isinstance(again, exc_type) and isinstance(again, errors.TaskError)


def test_an_unpicklable_exception_still_arrives_as_a_task_error():
    class Local(Exception):
        def __reduce__(self):
            raise TypeError("no")

    try:
        raise Local("boom")
    except Local as caught:
        blob = serialization.serialize_error(caught, function_name="g", pid=1, node_id="n")
    err = serialization.error_from_bytes(blob)
    assert isinstance(err, errors.TaskError) and "Local" in str(err)


def test_unpicklable_values_raise_a_serialization_error_naming_the_value():
    import threading
    with pytest.raises(errors.SerializationError, match="lock"):
        serialization.serialize({"x": threading.Lock()})


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_corrupt_blobs_raise_clear_errors(data):
    try:
        serialization.read_blob(data)
    except errors.SerializationError:
        pass
