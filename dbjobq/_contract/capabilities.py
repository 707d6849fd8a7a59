"""Capabilities: what a backend declares matches what it does."""

from __future__ import annotations

import pytest

from dbjobq._contract.helpers import make_job
from dbjobq.errors import ConfigurationError
from dbjobq.storage.base import Storage
from dbjobq.storage.capabilities import Capabilities, missing_for

__all__ = ["CapabilitiesContract"]


class CapabilitiesContract:
    """Capabilities: tests that take the `storage` fixture."""

    def test_capabilities_name_only_what_the_backend_has(self, storage: Storage) -> None:
        """Each declared flag has its method; `claims_ahead` comes with `release`."""
        declared = storage.capabilities
        assert isinstance(declared, Capabilities)
        cls = type(storage)

        def own(name: str) -> bool:
            return getattr(cls, name) is not getattr(Storage, name)

        assert missing_for(declared, claim=storage.claim, own=own) == []

    def test_subscribe_gives_nothing_or_a_way_to_end_it(self, storage: Storage) -> None:
        """`subscribe` returns `None` (poll instead) or a function that ends it."""
        unsubscribe = storage.subscribe(lambda: None)
        assert unsubscribe is None or callable(unsubscribe)
        if unsubscribe is not None:
            unsubscribe()

    def test_enqueue_in_transaction_follows_transactions(self, storage: Storage) -> None:
        """Without `transactions`, joining a transaction is refused and stores nothing."""
        if storage.capabilities.transactions:
            pytest.skip("enqueue_in_transaction takes the store's own connections")
        with pytest.raises(ConfigurationError):
            storage.enqueue_in_transaction(object(), [make_job()])
        assert storage.list_jobs() == []
