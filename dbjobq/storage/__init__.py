"""Storage backends: the `Storage` interface and the bundled implementations.

`SQLAlchemyStorage` is imported on first use, so that `from dbjobq.storage import
Storage` (a custom backend, the conformance suite) does not load SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbjobq.storage.base import Capabilities, Storage
from dbjobq.storage.memory import MemoryStorage

if TYPE_CHECKING:
    from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

__all__ = ["Capabilities", "MemoryStorage", "SQLAlchemyStorage", "Storage"]


def __getattr__(name: str) -> Any:
    if name == "SQLAlchemyStorage":
        from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

        return SQLAlchemyStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
