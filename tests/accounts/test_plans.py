"""Plans: the published tiers, and operator overrides from settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pixelmill.accounts.plans import DEFAULT_PLANS, Plan, load_plans


def test_default_tiers_match_published_limits() -> None:
    expected = {
        "free": (10, 50, 10),
        "starter": (20, 200, 20),
        "pro": (60, 1000, 60),
        "enterprise": (200, None, 200),
    }
    assert set(DEFAULT_PLANS) == set(expected)
    for name, (rpm, per_day, per_minute) in expected.items():
        plan = DEFAULT_PLANS[name]
        assert plan.name == name
        assert plan.requests_per_minute == rpm
        assert plan.executions_per_day == per_day
        assert plan.executions_per_minute == per_minute  # each tier its own execution rate
        assert plan.max_active_tasks == 24
        assert plan.request_window_s == 60


def test_override_changes_only_named_fields_and_leaves_defaults_alone() -> None:
    plans = load_plans({"free": {"executions_per_day": 20, "max_active_tasks": 2}})
    assert plans["free"].executions_per_day == 20
    assert plans["free"].max_active_tasks == 2
    assert plans["free"].requests_per_minute == 10
    assert DEFAULT_PLANS["free"].executions_per_day == 50
    assert plans["pro"] == DEFAULT_PLANS["pro"]


def test_new_plan_is_added_with_unnamed_limits_unlimited() -> None:
    plans = load_plans({"studio": {"requests_per_minute": 120, "monthly_credits": 9000}})
    studio = plans["studio"]
    assert studio.name == "studio"
    assert studio.requests_per_minute == 120
    assert studio.executions_per_day is None
    assert studio.executions_per_minute is None
    assert studio.monthly_credits == 9000
    assert set(plans) == {"free", "starter", "pro", "enterprise", "studio"}


def test_plan_object_override_takes_its_key_as_name() -> None:
    plans = load_plans({"free": Plan(name="anything", requests_per_minute=3)})
    assert plans["free"].name == "free"
    assert plans["free"].requests_per_minute == 3
    assert plans["free"].executions_per_day is None


def test_override_can_make_a_limit_unlimited() -> None:
    assert load_plans({"pro": {"executions_per_day": None}})["pro"].executions_per_day is None


@pytest.mark.parametrize(
    "override",
    [{"requests_per_minute": 0}, {"executions_per_day": -5}, {"request_window_s": 0}, {"rpm": 10}],
)
def test_invalid_override_names_the_field(override: dict) -> None:
    with pytest.raises(ValidationError) as excinfo:
        load_plans({"free": override})
    assert next(iter(override)) in str(excinfo.value)


def test_no_overrides_returns_a_copy() -> None:
    plans = load_plans(None)
    plans.pop("free")
    assert "free" in DEFAULT_PLANS
