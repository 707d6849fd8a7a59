"""Strict-JSON checks shared by every backend, so all of them accept exactly the same data."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from dbjobq.errors import PayloadError

__all__ = ["DEFAULT_MAX_DEPTH", "INT_RANGE", "check_json", "checked_dumps", "clean_text", "dumps"]

DEFAULT_MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a payload, `meta` or result."""

INT_RANGE = (-(2**63), 2**64 - 1)
"""Integers outside 64 bits are rejected: several databases' JSON types cannot hold them."""


def _bad_text(value: str) -> str | None:
    """Why `value` cannot be stored as JSON text, or `None` if it can."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (it contains a lone surrogate)"
    return None


def dumps(value: Any) -> str:
    """Serialise an already checked value compactly (UTF-8 text, no NaN)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _reusable_encoder() -> Callable[[Any], str] | None:
    """`dumps` for values of exact JSON types, without building an encoder per call.

    `json.dumps` builds its C encoder anew on every call, which costs more than
    encoding a small payload. This one is built once. It has no check for cycles,
    so it is only given values that `_plain` has walked. `None` where the C
    encoder is missing or takes other arguments; `dumps` serves then.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    escape = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or escape is None:
        return None

    def refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is not JSON")

    try:
        encode = make(None, refuse, escape, None, ":", ",", False, False, False)
        sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {}}
        if "".join(encode(sample, 0)) != dumps(sample):
            return None
    except Exception:  # noqa: BLE001 - another Python's internals: use dumps
        return None
    return lambda value: "".join(encode(value, 0))


_dumps_plain = _reusable_encoder() or dumps


def clean_text(text: str) -> str:
    """Make any text storable: NUL characters and lone surrogates become escapes."""
    text = text.replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _where(path: list[str | int]) -> str:
    return "".join(f"[{p!r}]" for p in path) or "the value"


def _plain(value: Any, depth: int) -> bool:
    """Whether `value` is made only of exact JSON types, nested at most `depth` deep.

    The quick test in front of `check_json`: it does not say what is wrong, and
    leaves out what the serialised text shows (NaN, NUL characters, lone
    surrogates) and anything unusual (subclasses of `int` or `str`), which then
    goes the long way.
    """
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None:
        return True
    if kind is int:
        return bool(INT_RANGE[0] <= value <= INT_RANGE[1])
    if depth <= 0:
        return False
    if kind is dict:
        for key, child in value.items():
            if type(key) is not str:
                return False
            kind = type(child)
            if kind is not str and not _plain(child, depth - 1):
                return False
        return True
    if kind is list:
        for child in value:
            kind = type(child)
            if kind is not str and not _plain(child, depth - 1):
                return False
        return True
    return False


def _check_size(size: int, what: str, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise PayloadError(f"{what} is {size} bytes of JSON, more than the limit of {max_bytes}")


def checked_dumps(
    value: Any,
    *,
    what: str = "payload",
    max_bytes: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> str:
    """`check_json`, then `dumps`: the value's JSON text, or `PayloadError`.

    Serialises once for the check of the size and for storing. Plain values take a
    quick path; anything it cannot vouch for is walked by `check_json`, which
    names the problem.
    """
    if _plain(value, max_depth):
        try:
            text = _dumps_plain(value)
            size = len(text.encode())
        except (ValueError, UnicodeEncodeError):
            pass  # NaN or a lone surrogate: check_json says where
        else:
            # \u0000 in the text: a NUL character, or merely a backslash before "u0000".
            if "\\u0000" not in text:
                _check_size(size, what, max_bytes)
                return text
    check_json(value, what=what, max_bytes=max_bytes, max_depth=max_depth)
    return dumps(value)


def check_json(
    value: Any,
    *,
    what: str = "payload",
    max_bytes: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> None:
    """Raise `PayloadError` unless `value` is strict JSON within the limits.

    Strict JSON: `dict` with `str` keys, `list`, `str` (valid Unicode, no NUL
    characters), `int` within 64 bits, finite `float`, `bool` and `None`. The walk
    is iterative, so a deeply nested value yields a `PayloadError` rather than a
    `RecursionError`.

    Args:
        value: The value to check.
        what: How to name the value in the error message.
        max_bytes: Largest accepted size of the UTF-8 JSON text; `None` for no limit.
        max_depth: Deepest accepted nesting of arrays and objects.

    Raises:
        PayloadError: If the value is not strict JSON or exceeds a limit.
    """
    stack: list[tuple[Any, list[str | int], int]] = [(value, [], 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise PayloadError(
                    f"{what} is nested deeper than {max_depth} levels at {_where(path)}"
                )
            stack.extend(_children(item, path, depth, what))
        else:
            _check_scalar(item, path, what)
    if max_bytes is not None:
        _check_size(len(dumps(value).encode()), what, max_bytes)


def _children(
    item: dict[Any, Any] | list[Any], path: list[str | int], depth: int, what: str
) -> list[tuple[Any, list[str | int], int]]:
    """The members of an object or array, to check next; bad object keys raise here."""
    if isinstance(item, list):
        return [(child, [*path, index], depth + 1) for index, child in enumerate(item)]
    children: list[tuple[Any, list[str | int], int]] = []
    for key, child in item.items():
        if not isinstance(key, str):
            raise PayloadError(
                f"{what} is not strict JSON: {_where(path)} has a key "
                f"{key!r} of type {type(key).__name__}; JSON object keys "
                "must be str"
            )
        problem = _bad_text(key)
        if problem:
            raise PayloadError(f"{what} is not strict JSON: key {key!r} {problem}")
        children.append((child, [*path, key], depth + 1))
    return children


def _check_scalar(item: Any, path: list[str | int], what: str) -> None:
    """Raise `PayloadError` unless `item` is a storable JSON scalar."""
    if item is None or isinstance(item, bool):
        return
    if isinstance(item, int):
        if not INT_RANGE[0] <= item <= INT_RANGE[1]:
            raise PayloadError(
                f"{what} is not storable: {_where(path)} is an integer outside 64 bits"
            )
        return
    if isinstance(item, float):
        if not math.isfinite(item):
            raise PayloadError(
                f"{what} is not strict JSON: {_where(path)} is {item!r}; "
                "NaN and Infinity have no JSON form"
            )
        return
    if isinstance(item, str):
        problem = _bad_text(item)
        if problem:
            raise PayloadError(f"{what} is not strict JSON: {_where(path)} {problem}")
        return
    hint = "; use a list" if isinstance(item, (tuple, set, frozenset)) else ""
    raise PayloadError(
        f"{what} is not strict JSON: {_where(path)} is a {type(item).__name__}{hint}"
    )
