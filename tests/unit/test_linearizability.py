"""The linearizability checker on hand-made histories, linearizable and not, and on big ones for speed."""

from __future__ import annotations

import random
import time

from sims.linearizability import KVModel, Operation, check


def op(key, input, output, invoke, response, client=""):
    return Operation(key, input, output, invoke, response, client)


def test_sequential_history_is_linearizable():
    history = [op("x", ("put", 1), None, 0, 1), op("x", ("get",), 1, 2, 3), op("x", ("delete",), True, 4, 5),
               op("x", ("get",), None, 6, 7), op("x", ("delete",), False, 8, 9)]
    assert check(history).ok is True


def test_stale_read_after_acknowledged_write_is_not():
    history = [op("x", ("put", 1), None, 0, 1), op("x", ("put", 2), None, 2, 3), op("x", ("get",), 1, 4, 5)]
    result = check(history)
    assert result.ok is False and result.key == "x"
    assert "not linearizable" in result.describe()


def test_concurrent_operations_may_take_effect_in_either_order():
    # The get overlaps both puts: it may see either value, or none if it went first...
    for seen in (None, 1, 2):
        history = [op("x", ("put", 1), None, 0, 10), op("x", ("put", 2), None, 1, 11), op("x", ("get",), seen, 2, 12)]
        assert check(history).ok is True
    # ...but never a value nobody wrote.
    history = [op("x", ("put", 1), None, 0, 10), op("x", ("get",), 3, 2, 12)]
    assert check(history).ok is False


def test_real_time_order_is_respected():
    # The second read starts after the first returned 2, so it cannot see the older 1 again.
    history = [op("x", ("put", 1), None, 0, 1), op("x", ("put", 2), None, 2, 20),
               op("x", ("get",), 2, 3, 4), op("x", ("get",), 1, 5, 6)]
    assert check(history).ok is False


def test_equal_times_count_as_concurrent():
    history = [op("x", ("put", 1), None, 0, 5), op("x", ("get",), None, 5, 6)]
    assert check(history).ok is True


def test_compare_and_set():
    good = [op("x", ("cas", None, "a"), True, 0, 1), op("x", ("cas", None, "b"), False, 2, 3),
            op("x", ("cas", "a", "b"), True, 4, 5), op("x", ("get",), "b", 6, 7)]
    assert check(good).ok is True
    both_won = [op("x", ("cas", None, "a"), True, 0, 10), op("x", ("cas", None, "b"), True, 1, 11)]
    assert check(both_won).ok is False


def test_a_name_is_claimed_once():
    ok = [op("n", ("claim", "a"), (True, "a"), 0, 10), op("n", ("claim", "b"), (False, "a"), 1, 11)]
    assert check(ok).ok is True
    twice = [op("n", ("claim", "a"), (True, "a"), 0, 10), op("n", ("claim", "b"), (True, "b"), 1, 11)]
    assert check(twice).ok is False
    wrong_holder = [op("n", ("claim", "a"), (True, "a"), 0, 1), op("n", ("claim", "b"), (False, "b"), 2, 3)]
    assert check(wrong_holder).ok is False


def test_operation_without_response_may_or_may_not_take_effect():
    for seen in (None, 1):
        history = [op("x", ("put", 1), None, 0, None), op("x", ("get",), seen, 5, 6)]
        assert check(history).ok is True
    # But not before it was invoked.
    history = [op("x", ("get",), 1, 0, 1), op("x", ("put", 1), None, 2, None)]
    assert check(history).ok is False
    # Once seen, it stays in effect.
    history = [op("x", ("put", 1), None, 0, None), op("x", ("get",), 1, 5, 6), op("x", ("get",), None, 7, 8)]
    assert check(history).ok is False


def test_keys_are_checked_independently_and_the_bad_one_is_named():
    history = [op("a", ("put", 1), None, 0, 1), op("b", ("put", 1), None, 0, 1),
               op("a", ("get",), 1, 2, 3), op("b", ("get",), None, 2, 3)]
    result = check(history)
    assert result.ok is False and result.key == "b" and len(result.operations) == 2


def _random_register_history(seed: int, n_ops: int, n_clients: int, key="k", lie_at: int | None = None):
    """A history produced by a real (atomic) register with overlapping clients; optionally one read lies."""
    rng = random.Random(seed)
    value, t, history = None, 0, []
    busy_until = [0] * n_clients
    for i in range(n_ops):
        client = rng.randrange(n_clients)
        t = max(t + 1, busy_until[client] + 1)
        invoke = t
        effect = invoke + rng.randint(0, 3)  # the instant it takes effect
        response = effect + rng.randint(0, 3)
        busy_until[client] = response
        if rng.random() < 0.5:
            value = i
            history.append(op(key, ("put", i), None, invoke, response, f"c{client}"))
        else:
            seen = "lie" if i == lie_at else value
            history.append(op(key, ("get",), seen, invoke, response, f"c{client}"))
        t = effect
    return history


def test_hundreds_of_overlapping_operations_per_key_check_fast():
    history = []
    for key in ("a", "b", "c"):
        history += _random_register_history(hash(key) % 1000, 400, 5, key=key)
    started = time.perf_counter()
    result = check(history)
    elapsed = time.perf_counter() - started
    assert result.ok is True, result.describe()
    assert elapsed < 1.0, f"checking 1,200 operations took {elapsed:.2f}s"


def test_a_single_lie_in_a_long_history_is_found_fast():
    history = _random_register_history(7, 400, 5, lie_at=350)
    started = time.perf_counter()
    assert check(history).ok is False
    assert time.perf_counter() - started < 1.0


def test_search_budget_gives_an_undecided_answer():
    # Many overlapping pending writes make the search branch; a tiny budget cannot decide.
    history = [op("x", ("put", i), None, i, None) for i in range(12)] + [op("x", ("get",), "never", 100, 101)]
    result = check(history, KVModel(), max_states_per_key=50)
    assert result.ok is None and "undecided" in result.describe()
