"""``StrEnum`` (Python 3.11+) for the runtime's kinds, on Python 3.10 too."""

from __future__ import annotations

import enum

try:
    from enum import StrEnum
except ImportError:  # Python 3.10

    class StrEnum(str, enum.Enum):  # type: ignore[no-redef]
        """An enum whose members are their string values (``str()`` and ``format``
        give the value, and they compare equal to it)."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return str(self.value).__format__(spec)


__all__ = ["StrEnum"]
