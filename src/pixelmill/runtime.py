"""The composition root: builds every service of a pixelmill process from Settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pixelmill.config import Settings
from pixelmill.engine.lifecycle import Lifecycle
from pixelmill.engine.runner import NodeRunner
from pixelmill.engine.service import ExecutionService
from pixelmill.files.signing import UrlSigner
from pixelmill.files.storage import LocalStorage
from pixelmill.models.catalog import ModelCatalog
from pixelmill.models.registry import ModelRegistry
from pixelmill.nodes.registry import default_registry
from pixelmill.store import migrate
from pixelmill.store.db import Database

log = logging.getLogger("pixelmill")


@dataclass
class NodeServices:
    """What node types may use at run time."""

    catalog: ModelCatalog
    models: ModelRegistry
    settings: Settings


class Runtime:
    def __init__(self, settings: Settings, catalog: ModelCatalog | None = None, models: ModelRegistry | None = None, migrate_db: bool = True):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url()
        if migrate_db:
            migrate.upgrade(url)
        self.db = Database(url)
        self.catalog = catalog or ModelCatalog.load(settings.models_catalog)
        self.models = models or ModelRegistry(self.catalog)
        self.storage = LocalStorage(settings.files_dir)
        self.signer = UrlSigner(settings.resolved_secret_key(), settings.signed_url_ttl_s)
        self.nodes = default_registry()
        self.services = NodeServices(self.catalog, self.models, settings)
        self.lifecycle = Lifecycle()
        self.queue = self._make_queue()
        self.runner = NodeRunner(
            self.db, self.nodes, self.services, self.storage, self.lifecycle, self.queue.enqueue,
            node_timeout_s=settings.node_timeout_s, file_retention_s=settings.file_retention_s,
        )
        self.queue.handler = self.runner.run
        self.executions = ExecutionService(
            self.db, self.nodes, self.services, self.queue.enqueue, self.lifecycle, result_ttl_s=settings.result_ttl_s,
        )
        from pixelmill.workflows.service import WorkflowService

        self.workflows = WorkflowService(self.db, self.executions)
        self.started = False

    def _make_queue(self) -> Any:
        if self.settings.queue == "celery":
            from pixelmill.queue.celery_queue import CeleryQueue

            return CeleryQueue(self.settings)
        from pixelmill.queue.inprocess import InProcessQueue

        return InProcessQueue(threads=self.settings.worker_threads)

    def start(self) -> None:
        """Start workers (embedded) and re-queue work a previous process left unfinished."""
        if self.started:
            return
        self.started = True
        self.queue.start()
        if self.settings.queue == "inprocess":
            n = self.executions.recover()
            if n:
                log.info("re-queued %d unfinished node runs", n)
        if self.settings.preload_models:
            self.models.preload(self.catalog.names())

    def stop(self) -> None:
        if self.started:
            self.queue.stop()
            self.started = False
        self.db.dispose()
