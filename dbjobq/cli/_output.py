"""What the commands print: JSON for scripts, aligned tables and short values for people.

Text that comes from job data goes through `safe` first, so that nothing a job's
producer wrote can act on the terminal.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dbjobq.job import JobStatus


def jsonable(value: Any) -> Any:
    """A value as plain JSON data: datetimes as ISO text, statuses and dataclasses unpacked."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, JobStatus):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


# Characters that a terminal acts on instead of showing: C0 and C1 controls (ESC starts
# colour, cursor and title sequences, CSI is one byte in C1), line and paragraph
# separators, and the bidirectional overrides that reorder what is shown.
_OTHERS = "\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_OTHERS}]")
_UNSAFE_BUT_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")  # keeps \t and \n


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def safe(value: object, *, lines: bool = False) -> str:
    r"""Text from job data, with what a terminal would act on escaped (ESC as `\u001b`).

    Job types, queues, errors and payloads come from whoever enqueued or ran the
    job; printed raw, an escape sequence in them could rewrite the screen or hide
    text. `lines=True` keeps newlines (for tracebacks).
    """
    text = str(value)
    return (_UNSAFE_BUT_LINES if lines else _UNSAFE).sub(_escape, text)


def print_json(value: Any) -> None:
    """Print a value as indented JSON, safe for a terminal and still exact JSON."""
    # json.dumps escapes C0 controls itself; the rest become \uXXXX escapes, which
    # decode to the very same strings: the output stays exact JSON.
    print(safe(json.dumps(jsonable(value), indent=2, ensure_ascii=False), lines=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under headers, in columns as wide as their widest cell."""
    cells = [[str(h) for h in headers]] + [["" if c is None else safe(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def age(seconds: float | None) -> str:
    """A duration in the largest unit that keeps it readable: 45s, 12m, 3.5h, 2.0d."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def short(text: str | None, width: int = 60) -> str:
    """The first line of a text, cut to `width` characters with an ellipsis."""
    line = (text or "").splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def when(value: datetime | None) -> str:
    """A moment to the second, or "-" for none."""
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")
