"""Plans: what an account may do — request rate, executions per minute and per day,
active tasks at once, and the credits it is granted.

``None`` in a limit means *unlimited*.  The built-in plans follow the tiers that
paid image/workflow APIs publish (Free 10 requests/min and 50 executions/day up to
Enterprise 200 requests/min and unlimited executions; 24 active tasks).  Each
tier has its own execution rate (free 10/min, starter 20, pro 60, enterprise 200):
a larger plan is not held to the smallest plan's pace.  Operators override or add plans through settings
(``Settings.plans``), merged by :func:`load_plans`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Plan(BaseModel):
    """The limits and credit grants of one plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    """Requests allowed per request window (60 s unless ``request_window_s`` says
    otherwise); ``None`` = unlimited."""
    request_window_s: int = Field(default=60, ge=1)
    """Length of the request window in seconds (60 in every built-in plan)."""
    executions_per_minute: int | None = Field(default=None, ge=1)
    executions_per_day: int | None = Field(default=None, ge=1)
    max_active_tasks: int = Field(default=24, ge=1)
    """Executions queued or running at once; over it a submit is refused with 429."""
    monthly_credits: float = Field(default=0.0, ge=0)
    """Credits granted at the start of every billing month."""
    initial_credits: float = Field(default=0.0, ge=0)
    """Credits granted once when an account is created on this plan."""
    weight: float = Field(default=1.0, gt=0)
    """Share of the GPUs when several accounts wait: an account on weight 2 gets
    twice the run time of one on weight 1 (weighted fair queueing)."""
    priority: int = 0
    """Plan-level priority: waiting work of a higher-priority plan runs before any
    of a lower one (fairness applies within one priority)."""
    min_request_priority: int = -10
    max_request_priority: int = 10
    """The range of ``priority`` a request may ask for; it orders the account's own
    waiting work (higher first), never another account's."""

    @model_validator(mode="after")
    def _check_priority_range(self) -> "Plan":
        if self.min_request_priority > self.max_request_priority:
            raise ValueError("min_request_priority must not exceed max_request_priority")
        return self


DEFAULT_PLANS: dict[str, Plan] = {
    "free": Plan(
        name="free",
        requests_per_minute=10,
        executions_per_minute=10,
        executions_per_day=50,
        monthly_credits=100.0,
        initial_credits=100.0,
        weight=1.0,
        max_request_priority=0,
    ),
    "starter": Plan(
        name="starter",
        requests_per_minute=20,
        executions_per_minute=20,
        executions_per_day=200,
        monthly_credits=1_000.0,
        initial_credits=100.0,
        weight=2.0,
        max_request_priority=5,
    ),
    "pro": Plan(
        name="pro",
        requests_per_minute=60,
        executions_per_minute=60,
        executions_per_day=1_000,
        monthly_credits=5_000.0,
        initial_credits=100.0,
        weight=4.0,
        max_request_priority=10,
    ),
    "enterprise": Plan(
        name="enterprise",
        requests_per_minute=200,
        executions_per_minute=200,
        executions_per_day=None,
        monthly_credits=50_000.0,
        initial_credits=100.0,
        weight=8.0,
        max_request_priority=10,
    ),
}


def load_plans(overrides: Mapping[str, Mapping[str, Any] | Plan] | None = None) -> dict[str, Plan]:
    """The built-in plans with ``overrides`` applied; ``DEFAULT_PLANS`` is left untouched.

    ``overrides`` maps a plan name to a :class:`Plan` or to a dict of fields.  A dict
    for an existing plan changes only the fields it names (``{"free":
    {"executions_per_day": 20}}``); a new name adds a plan, whose unnamed limits
    are unlimited.  A plan's ``name`` is always its key.  Invalid values raise
    :class:`pydantic.ValidationError` naming the field.
    """
    plans = dict(DEFAULT_PLANS)
    for key, override in (overrides or {}).items():
        if isinstance(override, Plan):
            fields = override.model_dump()
        else:
            base = plans[key].model_dump() if key in plans else {}
            fields = {**base, **dict(override)}
        fields["name"] = key
        plans[key] = Plan.model_validate(fields)
    return plans


def open_account(conn: Any, name: str, plan: Plan, credits: float | None = None) -> str:
    """Create account ``name`` on ``plan`` and grant its starting credits: the plan's
    ``initial_credits`` unless ``credits`` says otherwise.  The one sign-up rule, used by
    the admin API and the command line alike.  Returns the new account's id."""
    from pixelmill.accounts import keys, ledger

    account_id = keys.create_account(conn, name, plan.name)
    amount = plan.initial_credits if credits is None else credits
    if amount:
        ledger.grant(conn, account_id, amount, f"signup:{account_id}", note="initial credits")
    return account_id
