"""Job ids: RFC 9562 UUIDv7 strings, monotonic within a process."""

from __future__ import annotations

import os
import threading

from dbjobq import _clock

_lock = threading.Lock()
_last_ms = 0
_seq = 0
_random = b""  # random bytes read ahead from the OS, 8 per id
_taken = 0


def _forget_random() -> None:
    """In a forked child: the parent's unread random bytes must not be reused."""
    global _random, _taken
    _random, _taken = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def new_job_id() -> str:
    """Return a new UUIDv7 string; ids made later in this process sort after earlier ones.

    Time-ordered ids keep primary-key inserts append-only and break ties in FIFO order.
    """
    return new_job_ids(1)[0]


def new_job_ids(n: int) -> list[str]:
    """`n` new ids at once, in order (one lock and one clock reading for all)."""
    global _last_ms, _seq, _random, _taken
    values = []
    with _lock:
        ms = _clock.time_ns() // 1_000_000
        for _ in range(n):
            if ms > _last_ms:
                _last_ms, _seq = ms, int.from_bytes(os.urandom(2), "big") & 0x3FF
            else:
                # Same (or an earlier, after a clock step) millisecond: count up, and
                # borrow the next millisecond once the 12-bit counter runs out.
                _seq += 1
                if _seq > 0xFFF:
                    _last_ms, _seq = _last_ms + 1, 0
            # One read from the OS per 512 ids rather than one per id.
            if _taken >= len(_random):
                _random, _taken = os.urandom(4096), 0
            rand = int.from_bytes(_random[_taken : _taken + 8], "big") & ((1 << 62) - 1)
            _taken += 8
            values.append(
                (_last_ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | _seq << 64 | 0b10 << 62 | rand
            )
    ids = []
    for value in values:
        h = f"{value:032x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids
