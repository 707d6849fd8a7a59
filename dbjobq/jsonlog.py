"""Structured logging: one JSON object per line, with the job's id and type.

```python
import logging
from dbjobq.jsonlog import JSONFormatter

handler = logging.StreamHandler()
handler.setFormatter(JSONFormatter())
logging.basicConfig(level=logging.INFO, handlers=[handler])
```

The `dbjobq worker` command does this with `--log-format json`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

__all__ = ["JSONFormatter"]

_CONTEXT = ("job_id", "job_type", "worker_id")


class JSONFormatter(logging.Formatter):
    """Formats a record as a JSON object on one line.

    Keys: `time` (ISO 8601, UTC), `level`, `logger`, `message`; `job_id` and
    `job_type` when the record concerns a job (dbjobq puts them on its records and on
    `JobContext.logger`'s); `exception` with the traceback, if any.
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
        for key in _CONTEXT:
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)
