"""A conformance suite for `Storage` backends, to run with pytest.

Subclass `StorageContract` in a test module and provide a `storage` fixture that
yields a fresh, initialised and empty backend; every test of the contract then runs
against it:

```python
import pytest
from dbjobq.testing import StorageContract

class TestMyStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path):
        backend = MyStorage(tmp_path / "jobs")
        backend.initialize()
        yield backend
        backend.close()
```

To also check that two storage objects on the same store (two processes, say) never
claim the same job, override `other_storage` to open a second object on the store
that `storage` uses.

The tests are grouped by topic (enqueue, claim, finishing, leases, pauses, limits,
snooze, inspection, periodic, registry, text, unique rules, concurrency,
capabilities, waiting);
`StorageContract` combines them all. Tests of an optional feature are skipped, with the reason, when
`storage.capabilities` says the backend does without it, and never otherwise.

The suite needs pytest (`pip install pytest`). It never sleeps: lease expiry is
tested with zero-length leases, scheduling with delays an hour away or instants an
hour in the past, so it passes on backends whose clock it cannot control, as long as
that clock is within minutes of the test machine's.
"""

from __future__ import annotations

import pytest

from dbjobq._contract.capabilities import CapabilitiesContract
from dbjobq._contract.claim import ClaimContract
from dbjobq._contract.concurrency import ConcurrencyContract
from dbjobq._contract.enqueue import EnqueueContract
from dbjobq._contract.finishing import FinishingContract
from dbjobq._contract.helpers import make_job
from dbjobq._contract.inspection import InspectionContract
from dbjobq._contract.leases import LeaseContract
from dbjobq._contract.limits import LimitContract, SnoozeContract
from dbjobq._contract.pauses import PauseContract
from dbjobq._contract.periodic import PeriodicContract
from dbjobq._contract.registry import RegistryContract
from dbjobq._contract.text import TextContract
from dbjobq._contract.unique import UniqueRulesContract
from dbjobq._contract.waiting import WaitContract
from dbjobq._contract.workflows import WorkflowContract
from dbjobq.storage.base import Storage

__all__ = ["StorageContract", "make_job"]


class StorageContract(
    EnqueueContract,
    ClaimContract,
    FinishingContract,
    LeaseContract,
    PauseContract,
    LimitContract,
    SnoozeContract,
    InspectionContract,
    PeriodicContract,
    RegistryContract,
    TextContract,
    WorkflowContract,
    UniqueRulesContract,
    ConcurrencyContract,
    CapabilitiesContract,
    WaitContract,
):
    """The behaviour every `Storage` backend must show. Provide a `storage` fixture."""

    @pytest.fixture
    def storage(self) -> Storage:
        """Return (or yield) a fresh, initialised, empty backend; override it."""
        raise NotImplementedError("subclasses of StorageContract provide a storage fixture")

    @pytest.fixture
    def other_storage(self, storage: Storage) -> Storage:
        """A second storage object on the same store; by default the same object."""
        return storage

    concurrency_threads = 8
    """Threads used by the concurrency tests; lower it for slow backends."""
