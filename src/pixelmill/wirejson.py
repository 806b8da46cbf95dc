"""JSON from clients, parsed with bounds: nesting depth and NUL characters.

Every JSON body a client sends goes through :func:`loads` (the API's request
bodies and the ``Idempotency-Key`` fingerprint alike), so that

* a body nested deeper than :data:`MAX_DEPTH` levels is refused before any
  recursive code (validation, rendering, canonicalisation) sees it;
* a string holding a NUL character (``\\u0000``), which PostgreSQL cannot store
  in a text column, is refused whatever field it is in;
* ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's parser accepts but JSON
  does not have) are refused.

These faults raise :class:`UnsafeJson` (a ``ValueError``) with a stable ``code``;
malformed JSON raises ``json.JSONDecodeError`` as ``json.loads`` does.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of arrays/objects accepted; graphs and model options need far fewer."""


class UnsafeJson(ValueError):
    """JSON this service refuses: ``code`` is ``json_too_deep``, ``nul_character`` or ``invalid_number``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` with a nesting bound and without NUL characters in strings."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    # cheap pre-checks on the bytes: most bodies have few brackets and no escaped NUL
    brackets = data.count(b"[") + data.count(b"{")
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise _too_deep(max_depth) from None
    if brackets > max_depth or b"\\u0000" in data:
        check(value, max_depth)
    return value


def check(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`UnsafeJson` when ``value`` nests deeper than ``max_depth`` or holds a NUL."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise UnsafeJson("nul_character", "Strings must not contain NUL characters (\\u0000)")
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise _too_deep(max_depth)
            if isinstance(item, dict):
                for k, v in item.items():
                    if "\x00" in k:
                        raise UnsafeJson("nul_character", "Strings must not contain NUL characters (\\u0000)")
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in item)


def _no_constant(name: str):
    raise UnsafeJson("invalid_number", f"{name} is not a JSON number")


def _too_deep(max_depth: int) -> UnsafeJson:
    return UnsafeJson("json_too_deep", f"The JSON body is nested more than {max_depth} levels deep")
