"""Where models are: each worker's residency, advertised in the database, and the models report.

A scale-out worker writes what its registry holds (``worker_models``: state,
device, memory, last load time) every ``ADVERTISE_EVERY_S`` seconds and when
it stops; API nodes, which hold no models, read those rows for
``GET /api/v1/models``.  A row not refreshed for ``STALE_AFTER_S`` belongs to a
worker that is gone and is ignored.  The embedded server reports its own registry.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import sqlalchemy as sa

from pixelmill.models.registry import ModelRegistry
from pixelmill.periodic import Periodic
from pixelmill.store.db import Database
from pixelmill.store.tables import worker_models

log = logging.getLogger("pixelmill.placement")

ADVERTISE_EVERY_S = 10.0
STALE_AFTER_S = 3 * ADVERTISE_EVERY_S


def free_bytes(models: ModelRegistry) -> int | None:
    """The model memory a worker can still fill without unloading anything: the smallest
    unused budget of its kinds of memory that have one; None when none has a budget."""
    free = [max(0, u["budget_bytes"] - u["used_bytes"]) for u in models.usage().values() if u["budget_bytes"] is not None]
    return min(free) if free else None


class Advertiser:
    """Writes one worker's model residency to ``worker_models`` periodically.

    ``serves``: the models whose queues the worker consumes (None: every catalog
    model); a row of a cold model says "this worker would load it", so only
    those, and whatever it holds, are advertised.  Each row carries the
    worker's unused memory budget (``free_bytes``), which the scheduler reads to
    place a model resident nowhere on the worker that loads it most cheaply.
    """

    def __init__(self, db: Database, models: ModelRegistry, worker: str, every_s: float = ADVERTISE_EVERY_S, serves: Iterable[str] | None = None):
        self.db = db
        self.models = models
        self.worker = worker
        self.every_s = every_s
        self.serves = None if serves is None else set(serves)
        # the database briefly away: reported next time
        self._advertising = Periodic(
            "pixelmill-advertise", self.advertise, lambda: self.every_s, what=f"advertising the models of {worker}",
            log=log, level=logging.WARNING, first_now=True,
        )

    def advertise(self) -> None:
        now = time.time()
        free = free_bytes(self.models)
        rows = [
            dict(
                worker=self.worker, model=name, state=s["state"], device=s["device"], memory_bytes=s["memory_bytes"],
                load_seconds=s["load_seconds"], last_used_at=s["last_used_at"], updated_at=now, free_bytes=free,
            )
            for name, s in self.models.states().items()
            if self.serves is None or name in self.serves or s["state"] != "cold"
        ]
        with self.db.transaction() as conn:
            conn.execute(sa.delete(worker_models).where(worker_models.c.worker == self.worker))
            if rows:
                conn.execute(sa.insert(worker_models), rows)

    def withdraw(self) -> None:
        with self.db.transaction() as conn:
            conn.execute(sa.delete(worker_models).where(worker_models.c.worker == self.worker))

    def start(self) -> None:
        self._advertising.start()

    def stop(self) -> None:
        self._advertising.stop()
        try:
            self.withdraw()
        except Exception:
            log.warning("could not withdraw the models of %s", self.worker, exc_info=True)


def live_workers(db: Database) -> list[str]:
    """The workers that advertised their models lately (running ones)."""
    with db.read() as conn:
        return list(
            conn.execute(
                sa.select(worker_models.c.worker).where(worker_models.c.updated_at >= time.time() - STALE_AFTER_S).distinct()
            ).scalars()
        )


def residency_report(runtime: Any) -> dict[str, Any]:
    """The catalog with each model's residency: this process's own, or (scale-out API) the workers'."""
    catalog = runtime.catalog
    local = runtime.settings.queue != "celery"
    where: dict[str, list[dict]] = {name: [] for name in catalog.names()}
    if local:
        for name, state in runtime.models.states().items():
            if name in where:
                where[name].append({"worker": "embedded", **state})
        usage = runtime.models.usage()
    else:
        usage = None
        with runtime.db.read() as conn:
            rows = conn.execute(
                sa.select(worker_models).where(worker_models.c.updated_at >= time.time() - STALE_AFTER_S).order_by(worker_models.c.worker)
            ).all()
        for r in rows:
            if r.model in where and r.state != "cold":
                where[r.model].append(
                    {"worker": r.worker, "state": r.state, "device": r.device, "memory_bytes": r.memory_bytes,
                     "load_seconds": r.load_seconds, "last_used_at": r.last_used_at}
                )
    data = []
    for spec in catalog.models:
        places = where[spec.name]
        states = {p["state"] for p in places}
        state = "resident" if "resident" in states else "loading" if "loading" in states else "cold"
        data.append(
            {
                "name": spec.name,
                "task": spec.task,
                "bfl_endpoints": spec.bfl_endpoints,
                "default_steps": spec.default_steps,
                "max_steps": spec.max_steps,
                "supports_image_input": spec.supports_image_input,
                "max_batch": spec.max_batch,
                "loras": sorted(spec.loras),
                "speed": {"compile": spec.compile, "quantize": spec.quantize, "cache": spec.cache},
                "state": state,
                "workers": [p for p in places if p["state"] != "cold"],
                "load_seconds": max((p["load_seconds"] for p in places if p.get("load_seconds") is not None), default=None),
                "memory_bytes": max((p["memory_bytes"] for p in places if p["state"] != "cold"), default=0),
            }
        )
    out: dict[str, Any] = {"data": data}
    if usage is not None:
        out["memory"] = usage
    return out
