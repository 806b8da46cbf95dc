"""The composition root: builds every service of a pixelmill process from Settings."""

from __future__ import annotations

import logging
import os
from typing import Any

from pixelmill.accounts.admission import Admission
from pixelmill.accounts.directory import AccountDirectory
from pixelmill.accounts.idempotency import IdempotencyStore
from pixelmill.accounts.keys import KeyCache
from pixelmill.accounts.plans import load_plans
from pixelmill.accounts.ratelimit import RateLimiter
from pixelmill.config import Settings
from pixelmill.engine.lifecycle import Lifecycle
from pixelmill.engine.notify import Notice, PostgresNotifier, make_notifier
from pixelmill.engine.publisher import Publisher
from pixelmill.engine.runner import Finisher, NodeRunner
from pixelmill.engine.scheduler import FairDispatch, Scheduler
from pixelmill.engine.service import ExecutionService
from pixelmill.files.service import FileService
from pixelmill.files.signing import UrlSigner
from pixelmill.files.storage import LocalStorage
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.models.threads import TorchThreads
from pixelmill.net.safe_http import SafeHttpClient, UrlPolicy
from pixelmill.models.residency import MemoryBudget
from pixelmill.nodes.registry import default_registry
from pixelmill.nodes.services import NodeServices
from pixelmill.store import migrate
from pixelmill.store.db import Database

log = logging.getLogger("pixelmill")


class Runtime:
    def __init__(
        self, settings: Settings, catalog: ModelCatalog | None = None, models: ModelRegistry | None = None, migrate_db: bool | None = None,
        tracing: Any = None,
    ):
        """``migrate_db``: None (default) migrates in the embedded server (in-process queue) and
        only checks the schema in scale-out processes, which refuse to start when it is behind
        (:class:`~pixelmill.store.migrate.SchemaOutOfDate`).

        ``tracing``: a :class:`~pixelmill.ops.tracing.Tracing` to use; None: as the settings and
        the ``OTEL_*`` environment ask (off by default)."""
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url()
        if migrate_db is None:
            migrate_db = settings.queue == "inprocess"
        if migrate_db:
            migrate.upgrade(url)
        else:
            migrate.require_current(url)
        self.db = Database(url, busy_timeout_s=settings.db_busy_timeout_s)
        self.catalog = catalog or ModelCatalog.load(settings.resolved_models_catalog())
        if any(spec.compile for spec in self.catalog.models):  # compiled kernels survive a restart
            from pixelmill.models.speed import use_compile_cache

            use_compile_cache(settings.compile_cache_dir or settings.data_dir / "compile-cache")
        self.models = models or ModelRegistry(
            self.catalog,
            budget=MemoryBudget.from_megabytes(settings.model_ram_budget_mb, settings.model_vram_budget_mb),
            idle_unload_s=settings.model_idle_unload_s,
        )
        self.models.threads = torch_threads(settings.torch_threads, serves_api=settings.queue == "inprocess", node_threads=settings.worker_threads)
        self.storage = LocalStorage(settings.files_dir)
        self.files = FileService(self.db, self.storage)
        self.signer = UrlSigner(settings.resolved_secret_key(), settings.signed_url_ttl_s)
        self.nodes = default_registry()
        self.http = SafeHttpClient(UrlPolicy(allow_networks=settings.url_allow_networks))  # one guarded client, shared
        self.services = NodeServices(self.catalog, self.models, settings, self.http)
        self.notifier = make_notifier(settings.notifier, settings.queue, url, settings.broker_url)
        self.lifecycle = Lifecycle(hooks=[self.notifier])
        self.queue = self._make_queue()
        # scale-out: a run still RUNNING past the node deadline plus a margin was left by a dead worker
        abandoned = settings.node_timeout_s + max(2.0, 0.1 * settings.node_timeout_s) if settings.queue == "celery" else None
        self.publisher = Publisher(
            self.db, self.queue.enqueue, settings.republish_after_s, abandoned_after_s=abandoned, stamp=settings.queue != "inprocess",
        )
        self.runner = NodeRunner(
            self.db, self.nodes, self.services, self.storage, self.lifecycle, self.publisher,
            node_timeout_s=settings.node_timeout_s, file_retention_s=settings.file_retention_s,
        )
        self.plans = load_plans(settings.plans)
        self.scheduler = Scheduler(
            self.db, self.lifecycle, self.plans, settings.default_plan, window_s=settings.fair_window_s,
            local_leases=settings.queue == "inprocess", fair=settings.scheduler == "fair",
            affinity_max_wait_s=settings.affinity_max_wait_s,
        )
        if settings.queue == "inprocess":  # a run's outputs are finished beside the next run (see Finisher)
            self.runner.finisher = Finisher()
            self.runner.follows = True  # a restart re-queues a run it claimed in passing (see NodeRunner.follows)
            self.queue.drain = self.runner.finisher.join
            run, run_batch = self.runner.run_pipelined, self.runner.run_batch_pipelined
        else:  # a scale-out worker acknowledges a message only once its run is recorded
            run, run_batch = self.runner.run, self.runner.run_batch
        self.queue.handler = FairDispatch(self.scheduler, run, run_batch, self.runner.batch_key) if settings.scheduler == "fair" else run
        self.limiter = RateLimiter(settings.rate_limit_storage)
        self.admission = Admission(self.plans, self.limiter, settings.default_plan)
        self.accounts = AccountDirectory(self.db, self.plans, settings.default_plan)
        self.idempotency = IdempotencyStore(self.db, ttl_s=settings.idempotency_ttl_s)
        self.executions = ExecutionService(
            self.db, self.nodes, self.services, self.publisher, self.lifecycle, result_ttl_s=settings.result_ttl_s,
            admission=self.admission, scheduler=self.scheduler, live_view_ttl_s=settings.live_view_ttl_s,
            queued_view_ttl_s=settings.queued_view_ttl_s,
        )
        self.keys = KeyCache(self.db, usable=self._key_cache_usable)
        self.notifier.listen("keys", lambda _notice: self.keys.clear())
        self.notifier.listen("execution", self._learn_run_time)
        self.notifier.listen("execution", self._execution_changed)
        from pixelmill.workflows.service import WorkflowService

        self.workflows = WorkflowService(self.db, self.executions)
        self._init_webhooks()
        from pixelmill.ops.metrics import MetricsHook
        from pixelmill.ops.readiness import Readiness

        self.lifecycle.add_hook(MetricsHook())
        from pixelmill.ops.logs import StateChangeLog

        self.lifecycle.add_hook(StateChangeLog())
        from pixelmill.ops.tracing import Tracing, TracingHook

        #: None when tracing is off: no span, no hook, no middleware
        self.tracing = tracing if tracing is not None else Tracing.from_settings(settings)
        if self.tracing is not None:
            self.lifecycle.add_hook(TracingHook(self.tracing))
        #: scale-out API nodes run no nodes; `pixelmill worker` marks its runtime as running them
        self.readiness = Readiness(self, runs_nodes=settings.queue == "inprocess")
        self.warm = None  # a WarmStart once start() began loading the default models
        from pixelmill.engine.janitor import Janitor

        self.janitor = Janitor(
            self.db, self.storage, executions_s=settings.retention_executions_s, events_s=settings.retention_events_s,
            interval_s=settings.janitor_interval_s, idempotency=self.idempotency, dispatcher=self.dispatcher,
        )
        self.started = False

    def _key_cache_usable(self) -> bool:
        """Cached keys are safe where every change reaches this process: SQLite (a marker file beside
        the database) or a notifier that is listening to the other processes."""
        if self.db.is_sqlite:
            return True
        if isinstance(self.notifier, PostgresNotifier):
            self.notifier.start()
            return self.notifier.connected.is_set()
        return False

    def _execution_changed(self, notice: Notice) -> None:
        """Drop what this process keeps of the execution; the next queue position reads the queue again
        unless only a run's progress moved."""
        self.executions.changed(notice.id)
        if notice.event not in ("execution.progress", "node.preview"):
            self.scheduler.changed()

    def _learn_run_time(self, notice: Notice) -> None:
        if notice.event == "node.completed" and "seconds" in notice.data:
            self.executions.run_times.record(notice.data.get("queue") or "default", float(notice.data["seconds"]))

    def warm_model_names(self) -> list[str]:
        """The default models to load at start: ``warm_models``, else every catalog model."""
        names = self.settings.warm_models or self.catalog.names()
        return [n for n in names if n in self.catalog]

    def warm_start(self, names: list[str] | None = None) -> None:
        """Load the default models (or ``names``) in the background, then the output classifier;
        readiness reports the models' progress."""
        from pixelmill.ops.warm import WarmStart

        moderator = getattr(self.services, "moderator", None)
        also = [moderator.load] if moderator is not None else []
        self.warm = WarmStart(self.models, self.warm_model_names() if names is None else names, also=also).start()

    def consume(self, queues: list[str]) -> None:
        """This process is a scale-out worker consuming ``queues``: its picks follow model affinity
        (the models it holds first; runs better placed on another worker left to it, for at most
        ``affinity_max_wait_s``), and a delivery it does not run goes back to its queue."""
        from pixelmill.engine.placement import free_bytes
        from pixelmill.engine.scheduler import FairDispatch, WorkerView

        handler = self.queue.handler
        if not isinstance(handler, FairDispatch):
            return
        served = tuple(queues)

        def view() -> WorkerView:
            held = frozenset(n for n, st in self.models.states().items() if st["state"] in ("resident", "loading"))
            return WorkerView(self.runner.worker_name, served, held, free_bytes(self.models))

        handler.worker = view
        handler.requeue = self.queue.enqueue

    def _init_webhooks(self) -> None:
        """Outbox rows with every state change; a dispatcher that delivers them (started by ``start``)."""
        from pixelmill.webhooks.dispatcher import Dispatcher
        from pixelmill.webhooks.outbox import Outbox
        from pixelmill.webhooks.settings import WebhookSettings
        from pixelmill.webhooks.triggers import TriggerService

        s = self.settings
        self.outbox = Outbox(self.signer, s.resolved_base_url(), s.webhook_file_url_ttl_s)
        self.webhook_settings = WebhookSettings(self.db)
        self.lifecycle.add_hook(self.outbox)
        self.dispatcher = Dispatcher(self.db, self.http, retention_s=s.webhook_retention_days * 86400)
        self.triggers = TriggerService(self.db, self.workflows, admission=self.admission)

    def _make_queue(self) -> Any:
        if self.settings.queue == "celery":
            from pixelmill.queue.celery_queue import CeleryQueue

            return CeleryQueue(self.settings)
        from pixelmill.queue.inprocess import InProcessQueue

        return InProcessQueue(threads=self.settings.worker_threads, light_threads=self.settings.light_worker_threads)

    def start(self) -> None:
        """Start workers (embedded) and re-queue work a previous process left unfinished."""
        if self.started:
            return
        self.started = True
        self.janitor.start()
        self.models.start()  # idle models unload after model_idle_unload_s
        if self.settings.webhook_dispatcher:
            self.dispatcher.start()
        if self.settings.queue == "inprocess":
            self.scheduler.start()  # late work expires even while the worker is busy with a long job
            # before the worker threads start: a run they claimed would look like one a dead process left RUNNING
            n = self.executions.recover()
            if n:
                log.info("re-queued %d unfinished node runs", n)
            if self.runner.finisher is not None:
                self.runner.finisher.start()
            self.queue.start()
        else:  # a shared broker can be down when a node is published: publish such runs again later
            self.queue.start()
            self.publisher.start()
            self.notifier.start()  # other processes' changes drop this one's views of running executions
        if self.settings.preload_models and self.settings.queue == "inprocess":
            # only the embedded server runs nodes itself; scale-out API nodes hold no
            # models, and `pixelmill worker` loads the models of the queues it consumes
            self.warm_start()

    def stop(self) -> None:
        if self.started:
            self.publisher.stop()
            self.dispatcher.stop()
            self.janitor.stop()
            self.queue.stop()
            if self.runner.finisher is not None:
                self.runner.finisher.stop()  # after the workers: what they handed over is finished
            self.scheduler.stop()
            self.models.stop()
            moderator = getattr(self.services, "moderator", None)
            if moderator is not None:
                moderator.close()  # its sessions' weights and threads go now, not at some later full collection
            self.started = False
        self.notifier.stop()
        if self.tracing is not None:
            self.tracing.shutdown()
        self.db.dispose()


def torch_threads(configured: int, serves_api: bool, node_threads: int) -> TorchThreads:
    """PyTorch CPU threads per node run: ``configured``; or the cores shared by ``node_threads`` node
    runs at a time, less one core where this process also serves the API and its database work;
    at least 1.  A run takes every core while nothing else wants one (no other run, no request
    being served, no other process; see :mod:`pixelmill.models.threads`): an embedded server's,
    and a worker's that takes more than one run at a time (``--concurrency``), whose lone run
    would otherwise leave the other runs' cores idle."""
    if configured:
        return TorchThreads.fixed(configured)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, node_threads)
    low = max(1, (cores - (1 if serves_api else 0)) // share)
    return TorchThreads(low, cores)
