"""Where a stopper's incremental state lives (:class:`StateStore`): named files under one folder.
:class:`LocalStore` is a local folder; the Ray Tune stopper uses
:class:`~ncstudy.adapters.ray_tune.FsStore` on Tune's storage."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol


class StateStore(Protocol):
    """Where a stopper's incremental state lives: named files under one folder."""

    location: str  # a path or URI, saved in the state (a restore opens it again)

    def write(self, name: str, data: bytes) -> None: ...

    def read(self, name: str) -> bytes | None: ...


class LocalStore:
    """A :class:`StateStore` in a local folder (created on first write)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    @classmethod
    def at(cls, location: str) -> "LocalStore":
        return cls(location)

    def write(self, name: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / name)

    def read(self, name: str) -> bytes | None:
        p = self.root / name
        return p.read_bytes() if p.is_file() else None
