"""Identifiers: random, URL-safe, sortable enough to read in logs.

Their random bytes come from the operating system's generator (``os.urandom``), read in
blocks of :data:`_RandomBlocks.BLOCK` bytes: one system call per few hundred ids instead of
one per id.  A system call gives up the GIL, and the event loop that makes a request id
takes it back only after whichever busy thread holds it next lets go (up to the switch
interval, 5 ms), so one call per request cost requests real time under load.  A forked
child starts with no block of its own, so parent and child never hand out the same bytes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid


class _RandomBlocks:
    #: bytes read from the operating system at a time
    BLOCK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._block = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._block, self._at = b"", 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._at + n > len(self._block):
                self._block, self._at = os.urandom(max(self.BLOCK, n)), 0
            out = self._block[self._at : self._at + n]
            self._at += n
            return out


_random = _RandomBlocks()


def random_bytes(n: int) -> bytes:
    """``n`` bytes from the operating system's generator, each handed out once."""
    return _random.take(n)


def new_id() -> str:
    """A UUIDv7-style id: time-ordered, 36 characters (BFL ids are UUIDs too)."""
    ms = int(time.time() * 1000)
    b = bytearray(ms.to_bytes(6, "big") + _random.take(10))
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))


def new_uuid4() -> str:
    """A random UUID (version 4), as ``str(uuid.uuid4())`` makes, without a system call each."""
    return str(uuid.UUID(bytes=_random.take(16), version=4))
