"""Structured logging: one JSON object per line, with the job's id and type.

```python
import logging
from dbjobq.jsonlog import JSONFormatter

handler = logging.StreamHandler()
handler.setFormatter(JSONFormatter())
logging.basicConfig(level=logging.INFO, handlers=[handler])

logging.getLogger("app").info("charged", extra={"correlation_id": "c-42"})
# {"time": ..., "message": "charged", "correlation_id": "c-42"}
```

The `dbjobq worker` command does this with `--log-format json`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

__all__ = ["JSONFormatter"]

# The attributes every LogRecord has (and those Formatter.format may add): anything
# else on a record was put there by the caller, through `extra=` or a filter.
_STANDARD = frozenset(vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None, None))) | {
    "message",
    "asctime",
    "taskName",
}
_FIXED = ("time", "level", "logger", "message", "exception")


def _jsonable(value: object) -> object:
    """`value` if `json.dumps` takes it as it is, else its `repr`."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return repr(value)
    return value


class JSONFormatter(logging.Formatter):
    """Formats a record as a JSON object on one line.

    Keys: `time` (ISO 8601, UTC), `level`, `logger`, `message`, then every attribute
    the caller added to the record (`extra={"correlation_id": ...}`, or a filter):
    among them `job_id` and `job_type` when the record concerns a job (dbjobq puts
    them on its records and on `JobContext.logger`'s). Such a value goes in as it is
    when it is JSON (strict: no NaN), else as its `repr()`. `exception` holds the
    traceback, if any. An added attribute named like one of the fixed keys does not
    replace it.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as JSON."""
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _FIXED and not key.startswith("_"):
                data[key] = _jsonable(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)
