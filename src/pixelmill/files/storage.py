"""Where file bytes live.  The embedded backend is a local folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol


class FileStorage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def path(self, key: str) -> Path | None: ...  # a local path when the backend has one
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


class LocalStorage:
    """Files under one folder; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._prefix = os.path.join(str(self.root.resolve()), "")  # every key's file starts with it

    def _resolve(self, key: str) -> Path:
        """The file of ``key``, which must name a file below the root once ``..`` and ``.`` are read
        (checked on the name alone: no file system call; a link the operator made inside the root,
        to another disk say, is followed)."""
        p = os.path.normpath(os.path.join(self._prefix, key))
        if not p.startswith(self._prefix) or "\x00" in key:
            raise ValueError(f"bad storage key {key!r}")
        return Path(p)

    def put(self, key: str, data: bytes) -> None:
        target = self._resolve(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._resolve(key).read_bytes()

    def path(self, key: str) -> Path | None:
        return self._resolve(key)

    def delete(self, key: str) -> None:
        self._resolve(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._resolve(key).exists()
