"""Times on the wire."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(ts: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds (``2026-11-23T10:44:08.123Z``)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
