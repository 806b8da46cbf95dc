"""The retry schedule and the meaning of each delivery result."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from pixelmill.webhooks import MAX_ATTEMPTS, RETRY_DELAYS_S, classify, next_attempt_delay, should_throttle


def test_schedule_spans_ten_attempts_then_gives_up() -> None:
    rng = random.Random(7)
    delays = [next_attempt_delay(n, None, rng) for n in range(MAX_ATTEMPTS + 2)]
    assert delays[0] == 0.0
    assert delays[MAX_ATTEMPTS:] == [None, None]
    expected = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    for got, want in zip(delays[1:MAX_ATTEMPTS], expected, strict=True):
        assert want * 0.9 <= got <= want * 1.1
    total_hours = sum(RETRY_DELAYS_S) / 3600
    assert 75 < total_hours < 76  # 75:35:05 as in the Standard Webhooks example


def test_jitter_is_seedable_and_varies() -> None:
    first = [next_attempt_delay(3, None, random.Random(42)) for _ in range(3)]
    assert len(set(first)) == 1
    spread = {round(next_attempt_delay(3, None, random.Random(seed)), 3) for seed in range(20)}
    assert len(spread) > 10


def test_retry_after_seconds_is_honoured_when_longer() -> None:
    rng = random.Random(1)
    assert next_attempt_delay(1, "120", rng) == 120.0  # scheduled ~5 s
    assert 270 <= next_attempt_delay(2, "10", rng) <= 330  # scheduled ~5 min wins
    assert next_attempt_delay(1, str(10**9), rng) == 86400  # capped at 24 h
    assert next_attempt_delay(MAX_ATTEMPTS, "5", rng) is None  # never extends the schedule
    assert 4.5 <= next_attempt_delay(1, "soon", rng) <= 5.5  # unparsable header ignored


def test_retry_after_http_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    header = format_datetime(now + timedelta(hours=1), usegmt=True)
    assert next_attempt_delay(1, header, random.Random(0), now=now) == pytest.approx(3600)


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (200, None, "delivered"),
        (204, None, "delivered"),
        (299, None, "delivered"),
        (301, None, "retry"),
        (308, None, "retry"),
        (400, None, "retry"),
        (404, None, "retry"),
        (410, None, "disable"),
        (429, None, "retry"),
        (500, None, "retry"),
        (502, None, "retry"),
        (503, None, "retry"),
        (504, None, "retry"),
        (None, "timeout", "retry"),
        (None, "connect_failed", "retry"),
        (None, "url_unresolvable", "retry"),
        (None, "tls_error", "retry"),
        (None, "url_resolves_to_blocked_address", "give_up"),
        (None, "url_scheme_not_allowed", "give_up"),
    ],
)
def test_classify(status: int | None, error: str | None, outcome: str) -> None:
    assert classify(status, error) == outcome


def test_throttle_statuses() -> None:
    assert [code for code in (200, 410, 429, 500, 502, 503, 504) if should_throttle(code)] == [429, 502, 503, 504]
