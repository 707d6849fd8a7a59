"""Job ids: RFC 9562 UUIDv7 strings, monotonic within a process."""

from __future__ import annotations

import os
import threading
import uuid

from dbjobq import _clock

_lock = threading.Lock()
_last_ms = 0
_seq = 0


def new_job_id() -> str:
    """Return a new UUIDv7 string; ids made later in this process sort after earlier ones.

    Time-ordered ids keep primary-key inserts append-only and break ties in FIFO order.
    """
    global _last_ms, _seq
    with _lock:
        ms = _clock.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _seq = ms, int.from_bytes(os.urandom(2), "big") & 0x3FF
        else:
            # Same (or an earlier, after a clock step) millisecond: count up, and borrow
            # the next millisecond once the 12-bit counter runs out.
            _seq += 1
            if _seq > 0xFFF:
                _last_ms, _seq = _last_ms + 1, 0
        ms, seq = _last_ms, _seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | seq << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))
