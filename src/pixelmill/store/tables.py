"""All tables.  Timestamps are UNIX seconds (float) so SQLite and PostgreSQL agree."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

ID = sa.String(40)
TS = sa.Float

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("plan", sa.String(50), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("disabled_at", TS),
    sa.Column("webhook_url", sa.String(2083)),
    sa.Column("webhook_secrets", sa.JSON, nullable=False, default=list),  # newest first; two during rotation
    # the sum of the account's credit_ledger entries, moved in the same transaction as each entry
    sa.Column("credit_balance_micro", sa.BigInteger, nullable=False, default=0, server_default="0"),
    sa.Column("safety_tolerance", sa.Integer),  # pinned by the operator: replaces the requests' (None: theirs)
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("revoked_at", TS),
    sa.Column("last_used_at", TS),
)

executions = sa.Table(
    "executions",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("dialect", sa.String(20), nullable=False),  # bfl | workflow | apiframe | openai | trigger
    sa.Column("label", sa.String(200), nullable=False),  # BFL endpoint, workflow name, model ...
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("graph", sa.JSON, nullable=False),
    sa.Column("request", sa.JSON, nullable=False),  # the dialect's request, as accepted
    sa.Column("created_at", TS, nullable=False),
    sa.Column("started_at", TS),
    sa.Column("finished_at", TS),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # credits in integer micro-credits, as the ledger counts them: the hold, and the charge once finished
    sa.Column("cost_estimate_micro", sa.BigInteger, nullable=False, default=0),
    sa.Column("cost_actual_micro", sa.BigInteger),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("webhook_url", sa.String(2083)),
    sa.Column("webhook_secret", sa.String(512)),
    sa.Column("webhook_events", sa.JSON),  # filter; None = all
    sa.Column("workflow_id", ID),
    sa.Column("batch_id", ID),
    sa.Column("priority", sa.Integer, nullable=False, default=0),  # within the plan's range; orders the account's own work
    sa.Column("start_by", TS),  # not started by then: failed as ``expired`` (refunded)
    sa.Column("deadline_at", TS),  # not finished by then: stopped at the next step, failed as ``deadline_exceeded``
    #: the W3C trace context (``traceparent``/``tracestate``) of the submitting request, when tracing is on:
    #: the worker's node-run spans join that request's trace
    sa.Column("trace_context", sa.JSON),
    sa.Index("ix_executions_account_created", "account_id", "created_at"),
    sa.Index("ix_executions_status", "status"),
    sa.Index("ix_executions_batch", "batch_id"),
    sa.Index("ix_executions_account_status", "account_id", "status"),
)

node_runs = sa.Table(
    "node_runs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("execution_id", ID, sa.ForeignKey("executions.id"), nullable=False),  # indexed first by the unique constraint
    sa.Column("node_id", sa.String(100), nullable=False),
    sa.Column("node_type", sa.String(100), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),  # literal inputs
    sa.Column("links", sa.JSON, nullable=False),  # input name -> [node_id, output]
    sa.Column("queued_at", TS),
    sa.Column("published_at", TS),  # when its task reached the queue; NULL while queued = not yet (re-published)
    sa.Column("queue", sa.String(100)),  # model.<name> | default: which workers may run it
    sa.Column("picked_at", TS),  # the scheduler chose it for a worker (a short lease until that worker claims it)
    sa.Column("started_at", TS),
    sa.Column("finished_at", TS),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    sa.Column("outputs", sa.JSON),  # output name -> value (file ids for images)
    sa.Column("seed", sa.BigInteger),
    sa.Column("cost_micro", sa.BigInteger, nullable=False, default=0),  # the node's price, in micro-credits
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("cache_key", sa.String(64)),
    sa.Column("cached", sa.Boolean, nullable=False, default=False),
    sa.Column("worker", sa.String(200)),
    # the execution's account and request priority, copied (neither changes) so the scheduler finds
    # each account's next waiting run of a queue by index instead of walking the whole queue
    sa.Column("account_id", ID),
    sa.Column("priority", sa.Integer, nullable=False, default=0, server_default="0"),
    sa.UniqueConstraint("execution_id", "node_id", name="uq_node_runs_execution_node"),
    # each index is written by every claim and completion: none is the leading part of another
    sa.Index("ix_node_runs_started_at", "started_at"),
    sa.Index("ix_node_runs_cache", "cache_key", "account_id", "status"),  # a cache hit: same key, same account, succeeded
    sa.Index("ix_node_runs_status_queued", "status", "queued_at"),
    sa.Index("ix_node_runs_status_finished", "status", "finished_at"),
    # an execution's next waiting run (its queue position), without walking the whole queue
    sa.Index("ix_node_runs_execution_status", "execution_id", "status", "queued_at"),
)
# the accounts waiting on a queue, and each one's first waiting run in pick order
sa.Index(
    "ix_node_runs_waiting", node_runs.c.queue, node_runs.c.status, node_runs.c.account_id, node_runs.c.priority.desc(),
    node_runs.c.queued_at, node_runs.c.id,
)

files = sa.Table(
    "files",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("execution_id", ID, index=True),
    sa.Column("node_run_id", ID),
    sa.Column("storage_key", sa.String(500), nullable=False),
    sa.Column("content_type", sa.String(100), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("meta", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS),
)

credit_ledger = sa.Table(
    "credit_ledger",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("execution_id", ID),
    sa.Column("kind", sa.String(20), nullable=False),  # grant | hold | capture | release | adjust
    sa.Column("amount_micro", sa.BigInteger, nullable=False),  # signed change of available credits, in micro-credits
    sa.Column("entry_key", sa.String(200), nullable=False, unique=True),  # exactly-once key
    sa.Column("note", sa.String(500)),
    sa.Column("created_at", TS, nullable=False),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", ID, nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # processing | done
    sa.Column("response_status", sa.Integer),
    sa.Column("response_body", sa.Text),
    sa.Column("response_headers", sa.JSON),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    # the execution the keyed request created, written in the transaction that created it
    sa.Column("execution_id", ID),
    sa.UniqueConstraint("account_id", "key", name="uq_idempotency_account_key"),
)

workflows = sa.Table(
    "workflows",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("graph", sa.JSON, nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("webhook_url", sa.String(2083)),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("deleted_at", TS),
)

triggers = sa.Table(
    "triggers",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("workflow_id", ID, sa.ForeignKey("workflows.id"), nullable=False, index=True),
    sa.Column("account_id", ID, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("revoked_at", TS),
)

webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", ID, primary_key=True),  # the webhook-id receivers dedupe on
    sa.Column("account_id", ID, nullable=False, index=True),
    sa.Column("execution_id", ID, index=True),
    sa.Column("event_type", sa.String(50), nullable=False),
    sa.Column("url", sa.String(2083), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("bfl_secret", sa.String(512)),
    sa.Column("state", sa.String(20), nullable=False),  # pending | delivered | failed | disabled
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", TS),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("delivered_at", TS),
    sa.Index("ix_webhook_events_due", "state", "next_attempt_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("event_id", ID, sa.ForeignKey("webhook_events.id"), nullable=False, index=True),
    sa.Column("attempted_at", TS, nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("latency_ms", sa.Float),
    sa.Column("error", sa.Text),
)

execution_events = sa.Table(
    "execution_events",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("execution_id", ID, nullable=False, index=True),
    sa.Column("event", sa.String(50), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("created_at", TS, nullable=False),
)

worker_models = sa.Table(
    "worker_models",
    metadata,
    sa.Column("worker", sa.String(200), primary_key=True),  # host:pid of a `pixelmill worker`
    sa.Column("model", sa.String(100), primary_key=True),
    sa.Column("state", sa.String(20), nullable=False),  # cold | loading | resident
    sa.Column("device", sa.String(20)),
    sa.Column("memory_bytes", sa.BigInteger, nullable=False, default=0),
    sa.Column("load_seconds", sa.Float),
    sa.Column("last_used_at", TS),
    sa.Column("updated_at", TS, nullable=False),  # the worker's last report; stale rows are ignored
    sa.Column("free_bytes", sa.BigInteger),  # the worker's unused model memory budget (None: no budget)
)
