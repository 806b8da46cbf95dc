"""Server-sent events: the one encoder every streaming route uses."""

from __future__ import annotations

import json
from typing import Any


def sse_message(data: dict[str, Any], event: str | None = None, id: int | None = None) -> str:
    """One SSE message: optional ``id:`` and ``event:`` lines, then the data as compact JSON."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"
