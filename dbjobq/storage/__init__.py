"""Storage backends: the `Storage` interface and the bundled implementations."""

from __future__ import annotations

from dbjobq.storage.base import Capabilities, Storage
from dbjobq.storage.memory import MemoryStorage
from dbjobq.storage.sqlalchemy_storage import SQLAlchemyStorage

__all__ = ["Capabilities", "MemoryStorage", "SQLAlchemyStorage", "Storage"]
