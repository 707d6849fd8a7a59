"""The runner's one-shot latch, which stands in for a threading.Event per job."""

from __future__ import annotations

import threading

from dbjobq._runner import Latch


def test_a_latch_opens_once_for_every_waiter() -> None:
    latch = Latch()
    assert not latch.is_set()
    assert not latch.wait(0.01)
    seen: list[bool] = []
    waiters = [threading.Thread(target=lambda: seen.append(latch.wait(10))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    latch.set()
    for waiter in waiters:
        waiter.join()
    assert seen == [True, True, True]
    assert latch.is_set() and latch.wait() and latch.wait(0)
