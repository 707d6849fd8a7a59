"""The small shared modules: fault points, URL masking, the JSON encoder's fallback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from dbjobq import _faults, payload
from dbjobq._urls import mask_url
from dbjobq.errors import StorageError


@pytest.fixture
def faults() -> Iterator[None]:
    _faults.disarm()
    yield
    _faults.disarm()


@pytest.mark.usefixtures("faults")
def test_a_fault_fires_on_its_hit_only_and_once() -> None:
    _faults.arm("heartbeat", "fail", on_hit=3)
    _faults.reach("heartbeat")
    _faults.reach("after_claim")  # another point: not counted
    _faults.reach("heartbeat")
    with pytest.raises(StorageError, match="injected fault"):
        _faults.reach("heartbeat")
    _faults.reach("heartbeat")  # fired once: disarmed


@pytest.mark.usefixtures("faults")
def test_a_fault_runs_a_callable_and_disarm_clears_every_point() -> None:
    hits: list[str] = []
    _faults.arm("before_outcome", lambda: hits.append("before"))
    _faults.arm("after_outcome", lambda: hits.append("after"), on_hit=2)
    _faults.reach("before_outcome")
    _faults.reach("after_outcome")
    _faults.disarm()
    _faults.reach("after_outcome")
    assert hits == ["before"]


@pytest.mark.usefixtures("faults")
@pytest.mark.parametrize(
    ("point", "action", "message"),
    [
        ("after_commit", "fail", "unknown fault point 'after_commit'; known: after_claim, "),
        ("heartbeat", "explode", "unknown fault action 'explode'"),
    ],
)
def test_an_unknown_point_or_action_is_refused(point: str, action: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _faults.arm(point, action)
    _faults.reach(point)  # nothing was armed


def test_the_kill_action_kills_the_process_with_sigkill() -> None:
    code = (
        "from dbjobq import _faults\n"
        "_faults.arm('after_claim', 'kill')\n"
        "_faults.reach('after_claim')\n"
        "print('still alive')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # host:port with no user part: nothing to mask before the query.
        ("postgresql://db.local:5432/app", "postgresql://db.local:5432/app"),
        (
            "postgresql://db.local:5432/app?sslpassword=s3cret&application_name=x",
            "postgresql://db.local:5432/app?sslpassword=***&application_name=x",
        ),
        ("mysql://root@127.0.0.1/test?passwd=pw", "mysql://root@127.0.0.1/test?passwd=***"),
        ("host=db password=hunter2 user=ada", "host=db password=*** user=ada"),
    ],
)
def test_mask_url_masks_query_secrets_with_or_without_a_user(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_the_reusable_encoder_matches_json_dumps_and_refuses_other_types() -> None:
    encode = payload._reusable_encoder()
    assert encode is not None  # CPython has the C encoder
    value = {"a": [1, 2.5, None, True, "é\n\x01"], "b": {"c": ""}}
    assert encode(value) == payload.dumps(value)
    with pytest.raises(TypeError, match="set is not JSON"):
        encode({"s": {1}})


def _broken_make_encoder(*args: Any) -> Any:
    raise TypeError("takes other arguments here")


_real_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def _wrong_make_encoder(markers: Any, *args: Any) -> Any:
    # json.dumps itself goes through this too (with markers, for its cycle check):
    # only the encoder without them, the one payload builds, writes something else.
    if markers is not None:
        assert _real_make_encoder is not None
        return _real_make_encoder(markers, *args)
    return lambda value, indent: ["not", "json"]


@pytest.mark.parametrize(
    "make", [None, _broken_make_encoder, _wrong_make_encoder], ids=["missing", "other", "wrong"]
)
def test_without_a_usable_c_encoder_plain_dumps_serves(
    monkeypatch: pytest.MonkeyPatch, make: Any
) -> None:
    monkeypatch.setattr(json.encoder, "c_make_encoder", make)
    assert payload._reusable_encoder() is None
