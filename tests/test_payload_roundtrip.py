"""Any strict-JSON payload comes back exactly as it went in, on every backend."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbjobq import JobQueue, PayloadError
from dbjobq.payload import INT_RANGE, check_json, checked_dumps, dumps

text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_RANGE[0], max_value=INT_RANGE[1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text, children, max_size=5),
    max_leaves=25,
)
payloads = st.dictionaries(text, json_values, max_size=6)


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON kind all the way down (1.0 stays a float, -0.0 its sign)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=payloads)
def test_any_valid_json_payload_round_trips_exactly(
    queue: JobQueue, payload: dict[str, Any]
) -> None:
    check_json(payload)
    job_id = queue.enqueue("echo", payload, meta={"copy": payload})
    job = queue.get_job(job_id)
    assert same(job.payload, payload), (job.payload, payload)
    assert same(job.meta, {"copy": payload})


# Anything at all, valid or not: the quick path of checked_dumps must agree with check_json.
any_text = st.text(max_size=8) | st.sampled_from(["\x00", "a\udce9", "\\u0000", "\\\\u0000"])
any_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | any_text
    | st.sampled_from([(1, 2), {1, 2}, b"x", True])
)
anything = st.recursive(
    any_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(any_text | st.integers(0, 3) | st.none(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(value=anything, limit=st.none() | st.integers(2, 60), depth=st.integers(1, 4))
def test_checked_dumps_accepts_and_refuses_exactly_what_check_json_does(
    value: Any, limit: int | None, depth: int
) -> None:
    refusal = None
    try:
        check_json(value, max_bytes=limit, max_depth=depth)
    except PayloadError as error:
        refusal = str(error)
    if refusal is None:
        assert checked_dumps(value, max_bytes=limit, max_depth=depth) == dumps(value)
        return
    with pytest.raises(PayloadError) as caught:
        checked_dumps(value, max_bytes=limit, max_depth=depth)
    assert str(caught.value) == refusal
