"""Admission: whether an account may start one more execution right now.

:class:`Admission` is the :class:`AdmissionPolicy` that
:class:`~pixelmill.engine.service.ExecutionService` asks inside its submit transaction, so every dialect gets the same limits.  The
order of checks in a submit is:

1. validation and pricing of the graph (422 / 400) — before any limit is touched;
2. the **active-task cap** (``Plan.max_active_tasks``, queued + running
   executions; 429 ``active_task_limit``) — a count, consumes nothing;
3. the **credit check** (402) — the service's own;
4. the **execution windows** (``executions_per_minute`` / ``executions_per_day``,
   429 ``rate_limited`` naming the window) — consumed only here, so a request
   refused with 402 (or 422, or for the active-task cap) uses up no execution quota.

Step 2 is :meth:`AdmissionPolicy.check`, step 4 :meth:`AdmissionPolicy.consume`,
which the service calls after its credit check.  If the transaction fails after step 4 (a database error)
the slot stays consumed until its window passes: over-counting briefly is the safe
direction.  When the rate-limit store is unreachable the execution windows are
not enforced (logged), rather than refusing all work.

The windows a submit touched are also appended to :data:`reported_states` when a
caller (the HTTP middleware) has set it, so the response can carry them in its
``RateLimit`` headers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pixelmill.accounts import ledger
from pixelmill.accounts.keys import Principal
from pixelmill.accounts.plans import Plan
from pixelmill.accounts.ratelimit import LimitState, RateLimiter, RateLimitStorageError, rate_limited_error
from pixelmill.domain.status import ExecutionStatus
from pixelmill.errors import RateLimited
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import executions

log = logging.getLogger("pixelmill.accounts")

ACTIVE_TASKS = "active-tasks"
ACTIVE_RETRY_AFTER_S = 1

reported_states: ContextVar[list[LimitState] | None] = ContextVar("pixelmill_reported_rate_states", default=None)
"""Set to a list by a caller that wants the windows a submit touched appended to it."""


def active_task_error(limit: int, active: int) -> RateLimited:
    """The 429 for an account at its active-task cap (reported as a ``concurrent-requests`` limit)."""
    cap = LimitState(ACTIVE_TASKS, limit, 0, float(ACTIVE_RETRY_AFTER_S), 0)
    return RateLimited(
        f"Too many active tasks: {active} queued or running, the limit is {limit}; retry when one finishes",
        code="active_task_limit",
        violated_policies=[ACTIVE_TASKS],
        limit=limit,
        active=active,
        retry_after=ACTIVE_RETRY_AFTER_S,
        windows=[cap],
        violated=cap,
        concurrent=True,
    )


#: the account's unfinished executions, counted up to the cap (``:cap``; built once: it is read on
#: every submit): the check reads as many index entries as the plan allows, however many run
_ACTIVE = prebuilt(
    sa.select(sa.func.count()).select_from(
        sa.select(sa.literal(1))
        .select_from(executions)
        .where(executions.c.account_id == sa.bindparam("account"), executions.c.status.in_(ExecutionStatus.active()))
        .limit(sa.bindparam("cap"))
        .subquery()
    )
)


class AdmissionPolicy:
    """Whether a submit may go ahead; admits everything unless a subclass overrides a step.

    The execution service calls both steps inside its submit transaction, with the
    account row locked: :meth:`check` before its credit check, :meth:`consume` once
    that passed.  Either refuses by raising (e.g. :class:`~pixelmill.errors.RateLimited`).
    """

    def check(self, conn: Connection, principal: Principal) -> None:
        """Checks that consume nothing (e.g. a cap on active tasks)."""

    def consume(self, conn: Connection, principal: Principal) -> None:
        """Checks that use up quota; reached only by a submit that will be accepted otherwise."""

    def count_request(self, principal: Principal) -> None:
        """Count one API request that arrived without the HTTP middleware (a workflow trigger URL); raise to refuse."""


class Admission(AdmissionPolicy):
    """Per-plan admission of new executions: active-task cap, then execution windows.

    ``plans`` maps plan names to plans; an account whose plan is not (or no longer)
    configured is treated as on ``default_plan``.
    """

    def __init__(self, plans: Mapping[str, Plan], limiter: RateLimiter, default_plan: str = "free"):
        if default_plan not in plans:
            raise ValueError(f"default plan {default_plan!r} is not among the plans: {', '.join(sorted(plans))}")
        self.plans = plans
        self.limiter = limiter
        self.default_plan = default_plan

    def plan_for(self, principal: Principal) -> Plan:
        plan = self.plans.get(principal.plan)
        if plan is None:
            log.warning("account %s is on unknown plan %r; applying %r", principal.account_id, principal.plan, self.default_plan)
            plan = self.plans[self.default_plan]
        return plan

    def check(self, conn: Connection, principal: Principal) -> None:
        """Grant due plan credits, then the active-task cap: :class:`RateLimited` (``active_task_limit``)."""
        plan = self.plan_for(principal)
        ledger.grant_monthly(conn, principal.account_id, plan.monthly_credits)
        active = conn.execute(_ACTIVE, {"account": principal.account_id, "cap": plan.max_active_tasks}).scalar_one()
        if active >= plan.max_active_tasks:
            raise active_task_error(plan.max_active_tasks, int(active))

    def consume(self, conn: Connection, principal: Principal) -> None:
        """One execution from the plan's windows: :class:`RateLimited` (``rate_limited``) when one is full."""
        self.take_execution(principal, self.plan_for(principal))

    def count_request(self, principal: Principal) -> None:
        """One request of the plan's request window; when the store is down, the execution windows still apply."""
        try:
            decision = self.limiter.hit_request(principal.account_id, self.plan_for(principal))
        except RateLimitStorageError:
            return
        if not decision.allowed:
            raise rate_limited_error(decision)

    def balance(self, db, principal: Principal) -> float:
        """The account's credits, after granting this month's plan credits if they are due."""
        plan = self.plan_for(principal)
        with db.read() as conn:
            due = ledger.monthly_grant_due(conn, principal.account_id, plan.monthly_credits)
            if due is None:
                return ledger.balance(conn, principal.account_id)
        with db.transaction() as conn:
            ledger.grant_monthly(conn, principal.account_id, plan.monthly_credits)
            return ledger.balance(conn, principal.account_id)

    def take_execution(self, principal: Principal, plan: Plan) -> None:
        """Consume one execution from the plan's windows; 429 naming the window when full."""
        try:
            decision = self.limiter.hit_execution(principal.account_id, plan)
        except RateLimitStorageError:
            log.warning("rate-limit store unreachable: execution windows not enforced for %s", principal.account_id)
            return
        if not decision.allowed:
            raise rate_limited_error(decision)
        sink = reported_states.get()
        if sink is not None:
            sink.extend(decision.states)
