"""Identifiers: random, URL-safe, sortable enough to read in logs."""

from __future__ import annotations

import secrets
import time
import uuid


def new_id() -> str:
    """A UUIDv7-style id: time-ordered, 36 characters (BFL ids are UUIDs too)."""
    ms = int(time.time() * 1000)
    rand = secrets.token_bytes(10)
    b = ms.to_bytes(6, "big") + rand
    b = bytearray(b)
    b[6] = (b[6] & 0x0F) | 0x70
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))
