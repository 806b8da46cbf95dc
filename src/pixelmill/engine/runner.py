"""NodeRunner: executes one node run, start to finish.  Safe to call twice for the same run.

A database that is busy (locked past its busy timeout) never costs a finished run its
result: the claim, the outputs' rows, the completion and the failure are written in
whole transactions retried with backoff (:func:`~pixelmill.store.db.retry_when_busy`)
for up to the node deadline; a progress write that finds it busy is skipped.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import io
import logging
import os
import queue
import socket
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import sqlalchemy as sa
from PIL import Image

from pixelmill.domain.status import ExecutionStatus, NodeStatus
from pixelmill.engine.lifecycle import Lifecycle, NodeTask
from pixelmill.engine.publisher import publish_all
from pixelmill.files.storage import FileStorage
from pixelmill.ids import new_id
from pixelmill.moderation import ContentModerated
from pixelmill.models.imageops import decode_slot
from pixelmill.models.base import DeadlineExceeded, GenerationCancelled, StepControl
from pixelmill.models.imageops import FILE_EXTENSIONS, MIME_TYPES, encode_image
from pixelmill.nodes.base import NodeContext, NodeRegistry
from pixelmill.nodes.services import NodeServices
from pixelmill.store.db import Database, database_busy, retry_when_busy
from pixelmill.store.prebuilt import prebuilt
from pixelmill.store.tables import executions, files, node_runs

log = logging.getLogger("pixelmill.runner")

PROGRESS_EVERY_S = 0.2


class NodeBusy(Exception):
    """A node run is RUNNING on another worker within its deadline: deliver this task again later."""

    def __init__(self, retry_after_s: float):
        super().__init__(f"node run is busy elsewhere; retry in {retry_after_s:.0f} s")
        self.retry_after_s = max(1.0, retry_after_s)


# Statements built once: building one per call costs more than executing it.
#: a run to claim, with what the claim and the run need of its execution
_RUN = prebuilt(
    sa.select(
        node_runs,
        executions.c.status.label("execution_status"),
        executions.c.cancel_requested.label("execution_cancel_requested"),
        executions.c.account_id.label("execution_account_id"),
        executions.c.deadline_at.label("execution_deadline_at"),
    )
    .join(executions, executions.c.id == node_runs.c.execution_id)
    .where(node_runs.c.id == sa.bindparam("id"))
)


class ClaimedRun:
    """A ``node_runs`` row as its claim left it (read with :data:`_RUN`, then the claim's values)."""

    __slots__ = ("_mapping",)

    def __init__(self, row: Mapping[str, Any], claimed: Mapping[str, Any]):
        self._mapping = {**row, **claimed}

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(name) from None

#: a finished run of the same account with the same cache key
_CACHE_HIT = prebuilt(
    sa.select(node_runs.c.outputs)
    .where(
        node_runs.c.cache_key == sa.bindparam("cache_key"),
        node_runs.c.account_id == sa.bindparam("account_id"),
        node_runs.c.status == NodeStatus.SUCCEEDED,
        node_runs.c.id != sa.bindparam("id"),
    )
    .limit(1)
)
_FILE_KEYS = prebuilt(sa.select(files.c.id, files.c.storage_key).where(files.c.id.in_(sa.bindparam("ids", expanding=True))))


class NodeRunner:
    def __init__(
        self,
        db: Database,
        nodes: NodeRegistry,
        services: NodeServices,
        storage: FileStorage,
        lifecycle: Lifecycle,
        enqueue: Callable[[NodeTask], None],
        node_timeout_s: float = 600.0,
        file_retention_s: int = 7 * 24 * 3600,
    ):
        self.db = db
        self.nodes = nodes
        self.services = services
        self.storage = storage
        self.lifecycle = lifecycle
        self.enqueue = enqueue
        self.node_timeout_s = node_timeout_s
        self.file_retention_s = file_retention_s
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"
        #: finishes runs handed over by :meth:`run_pipelined` (None: every run finishes where it ran)
        self.finisher: Finisher | None = None
        #: a run finished from the cache is followed at once, on the same thread, by the run it made
        #: runnable on the same queue (its execution goes on instead of queueing behind every other
        #: one).  Only where a restart re-queues runs left RUNNING (embedded mode): a scale-out worker
        #: holds a message for the run it was given, and none for a run it claims in passing
        self.follows = False
        #: how long a write this runner must not lose is retried while the database is busy
        self.busy_retry_s = max(30.0, node_timeout_s)

    def run(self, task: NodeTask) -> None:
        run = self._claim_retrying(task.node_run_id, follow=self.follows)
        if run is None:
            return
        self._run_claimed(run)

    def _claim_retrying(self, node_run_id: str, follow: bool = False):
        """The run, claimed; None when there is nothing to run: it is done, cancelled, claimed by another
        worker, or its outputs were found in the cache (then it was finished in the claim's transaction,
        and with ``follow`` the run it made runnable on its queue is claimed and given instead)."""
        return retry_when_busy(lambda: self._claim(node_run_id, follow), self.busy_retry_s, "node claim")

    def run_batch(self, tasks: list[NodeTask]) -> None:
        """Run compatible node runs of one batchable node type as one call (see ``NodeType.run_batch``).

        Each run is claimed, cached, cancelled, failed and finished on its own:
        a run cancelled mid-batch stops counting at the next step while the
        others go on.
        """
        runs = []
        for task in tasks:
            try:
                run = self._claim_retrying(task.node_run_id)
            except NodeBusy:
                continue
            if run is None:
                continue
            runs.append(run)
        if len(runs) <= 1:
            for run in runs:
                self._run_claimed(run)
            return
        ntype = self.nodes.get(runs[0].node_type)
        controls: list = [None] * len(runs)
        try:
            parsed = [ntype.Params.model_validate({k: v for k, v in r.params.items() if not k.startswith("__")}) for r in runs]
            controls = [self._control(r) for r in runs]
            contexts = [NodeContext(control=c, seed=r.seed or 0, services=self.services) for r, c in zip(runs, controls)]
            results = ntype.run_batch(contexts, parsed)
        except Exception as e:  # the batch as a whole failed: each run records it
            results = [e] * len(runs)
        for run, control, result in zip(runs, controls, results):
            try:
                if isinstance(result, BaseException):
                    raise result
                control.check()
            except Exception as e:
                self._failed(run, control, e)
                continue
            self._record(run, control, result)

    def _run_claimed(self, run) -> None:
        """``run`` for a run already claimed."""
        ntype = self.nodes.get(run.node_type)
        control = None
        try:
            parsed = ntype.Params.model_validate({k: v for k, v in run.params.items() if not k.startswith("__")})
            inputs = self._load_inputs(run)
            control = self._control(run)
            result = ntype.run(NodeContext(control=control, seed=run.seed or 0, services=self.services), parsed, inputs)
            control.check()
        except Exception as e:
            self._failed(run, control, e)
            return
        self._record(run, control, result)

    def _record(self, run, control, result) -> None:
        """Finish a run whose node computed ``result``: here, or on the finisher thread when this
        thread is a pipelined worker's (it goes on with its next run meanwhile)."""
        finisher = self.finisher
        if finisher is not None and getattr(_pipelined, "on", False):
            finisher.submit(lambda: self._record_now(run, control, result), f"node {run.node_id} of execution {run.execution_id}")
        else:
            self._record_now(run, control, result)

    def _record_now(self, run, control, result) -> None:
        """Check, store and record a finished run's outputs.  A database still busy after every retry
        is not the node's failure: it propagates, the run stays RUNNING and is taken over after its deadline."""
        try:
            if result.release_check is None:
                encoded = self._encode_images(run, result.images, result.output_format, result.metadata)
            else:
                # the images are encoded while they are checked (e.g. output moderation, which raises
                # to withhold them): both spend most of their time outside the GIL, and nothing is
                # stored before the check passes
                encoding = _encoder().submit(self._encode_images, run, result.images, result.output_format, result.metadata)
                try:
                    result.release_check()
                finally:
                    encoded = encoding.result()
            self._succeed(run, self._put_images(encoded))
        except Exception as e:
            if database_busy(e) is not None:
                raise
            self._failed(run, control, e)  # withheld, or an image that cannot be encoded or stored

    def run_pipelined(self, task: NodeTask) -> None:
        """:meth:`run`, leaving the run's finishing (output checks, encoding, storage, the completion
        write) to the finisher thread, so the next run starts at once (embedded mode)."""
        with _pipelining():
            self.run(task)

    def run_batch_pipelined(self, tasks: list[NodeTask]) -> None:
        """:meth:`run_batch`, finishing each run on the finisher thread (see :meth:`run_pipelined`)."""
        with _pipelining():
            self.run_batch(tasks)

    def batch_key(self, row) -> tuple[str, int] | None:
        """(compatibility key, largest batch) of a waiting ``node_runs`` row; None if it runs alone."""
        if row.links:
            return None
        ntype = self.nodes.get(row.node_type)
        if ntype is None:
            return None
        try:
            params = ntype.Params.model_validate({k: v for k, v in (row.params or {}).items() if not k.startswith("__")})
            return ntype.batch_key(params, self.services)
        except Exception:
            return None

    def _succeed(self, run, rows: list[dict]) -> None:
        """Record ``run`` as succeeded with the stored images whose ``files`` rows are ``rows``."""
        outputs = {"images": [r["id"] for r in rows]}
        self._finish(run, outputs, cost_micro=run.cost_micro, cached=False, file_rows=rows)

    def _failed(self, run, control, error: Exception) -> None:
        """Record why a run stopped: its deadline, a cancel, or a failure (never lost)."""
        if isinstance(error, DeadlineExceeded):
            if control is not None and control.client_deadline:
                self._fail(run, "deadline_exceeded", "The task did not finish before its run deadline; nothing was charged")
            else:
                self._fail(run, "deadline_exceeded", f"node {run.node_id} ran longer than {self.node_timeout_s:.0f} s")
        elif isinstance(error, GenerationCancelled):
            self._fail(run, "cancelled", "Cancelled by the client", cancelled=True)
        elif isinstance(error, ContentModerated):  # the output was withheld: nothing stored, the hold is released
            self._fail(run, error.code, str(error))
        else:
            log.error("node %s of execution %s failed", run.node_id, run.execution_id, exc_info=error)
            self._fail(run, getattr(error, "code", "node_failed"), f"{type(error).__name__}: {error}")

    # --- steps ------------------------------------------------------------
    def _claim(self, node_run_id: str, follow: bool = False):
        with self.db.transaction() as conn:
            run = self._claim_in(conn, conn.execute(_RUN, {"id": node_run_id}).first())
            cached = self._cached_outputs(conn, run) if run is not None and run.cache_key else None
            if run is None or cached is None:
                return run
            # the same outputs were made before: the run finishes in the transaction that claimed it
            read: dict[str, Any] = {}
            tasks = self._succeed_cached(conn, run, cached, read)
            after = self._follow(conn, run.queue, tasks, read) if follow else None
        self._publish(run, tasks)
        return after

    def _follow(self, conn, queue: str | None, tasks: list[NodeTask], read: dict[str, Any]) -> "ClaimedRun | None":
        """Claim the first of ``tasks`` (runs just made runnable, their rows in ``read``) that waits on
        ``queue``, and take it out of ``tasks``: it is not published, the caller runs it next."""
        for task in tasks:
            if (task.queue or "default") != (queue or "default"):
                continue
            run = self._claim_in(conn, read[task.node_run_id])
            if run is not None:
                tasks.remove(task)
                return run
        return None

    def _succeed_cached(self, conn, run, outputs: dict, read: dict[str, Any] | None = None) -> list[NodeTask]:
        """Finish the claimed ``run`` with cached ``outputs``, and with it each run this makes runnable
        whose outputs are cached too (a chain of cache hits is one transaction, and reaches no queue).
        The runs made runnable that have to run, for the caller to publish once committed."""
        return self._cached_successors(conn, self.lifecycle.succeed_node(conn, run, outputs, 0, True), read)

    def _cached_successors(self, conn, tasks: list[NodeTask], read: dict[str, Any] | None = None) -> list[NodeTask]:
        """``tasks`` (runs a completion in ``conn``'s transaction just queued), less those finished from
        the cache here (see :meth:`_succeed_cached`), plus what those made runnable; ``read`` gets the
        row of each run left, as read here."""
        left = []
        for task in tasks:
            row = conn.execute(_RUN, {"id": task.node_run_id}).first()
            outputs = self._cached_outputs(conn, row) if row is not None and row.cache_key else None
            run = self._claim_in(conn, row) if outputs is not None else None
            if run is None:
                left.append(task)
                if read is not None:
                    read[task.node_run_id] = row
                continue
            left += self._succeed_cached(conn, run, outputs, read)
        return left

    def _claim_in(self, conn, run) -> "ClaimedRun | None":
        """Claim ``run`` (a row read with :data:`_RUN`) in ``conn``'s transaction (see :meth:`_claim_retrying`)."""
        if run is None or NodeStatus(run.status) not in (NodeStatus.QUEUED, NodeStatus.RUNNING):
            return None  # already done (a duplicate delivery) or cancelled
        if NodeStatus(run.status) == NodeStatus.RUNNING and (run.started_at or 0) + self.node_timeout_s > time.time():
            # another worker runs it now; if that worker died, the run is taken over once its deadline passed
            raise NodeBusy(run.started_at + self.node_timeout_s - time.time())
        if ExecutionStatus(run.execution_status).is_terminal():
            return None
        if run.execution_cancel_requested:
            self.lifecycle.finish_execution(conn, run.execution_id, ExecutionStatus.CANCELLED, "cancelled", "Cancelled by the client")
            return None
        claimed = self.lifecycle.start_node(conn, run, self.worker_name)
        if claimed is None:
            return None  # another worker claimed it between our read and our update
        return ClaimedRun(run._mapping, claimed)

    def _control(self, run) -> StepControl:
        node_run_id = run.id
        control = StepControl(deadline=time.monotonic() + self.node_timeout_s)
        deadline_at = run.execution_deadline_at  # the client's run deadline (Cancel-After), when sooner
        if deadline_at is not None and time.monotonic() + (deadline_at - time.time()) < control.deadline:
            control.deadline = time.monotonic() + (deadline_at - time.time())
            control.client_deadline = True
        last = [time.monotonic()]  # a run quicker than one interval writes no progress at all

        def on_progress(fraction: float) -> None:
            now = time.monotonic()
            if fraction < 1.0 and now - last[0] < PROGRESS_EVERY_S:
                return
            last[0] = now
            try:
                with self.db.transaction() as conn:
                    if self.lifecycle.progress(conn, node_run_id, fraction):
                        control.cancel()
            except Exception as exc:  # a busy database skips this report; the run goes on
                if database_busy(exc) is None:
                    raise
                log.info("progress of node %s not stored: the database is busy", run.node_id)

        def on_preview(index: int, images: list[Image.Image]) -> None:
            try:
                fmt = run.params.get("output_format") if run.params.get("output_format") in MIME_TYPES else "png"
                rows = self._store_images(run, images, fmt, {"preview": str(index)})  # encoded before the write turn
                with self.db.transaction() as conn:
                    if rows:
                        conn.execute(sa.insert(files), rows)
                    self.lifecycle.event(conn, run.execution_id, "node.preview", {"node": run.node_id, "index": index, "files": [r["id"] for r in rows]})
            except Exception:  # a preview is a courtesy: the run goes on without it
                log.warning("preview %d of node %s could not be stored", index, run.node_id, exc_info=True)

        control.on_progress = on_progress
        control.on_preview = on_preview
        return control

    def _cached_outputs(self, conn, run) -> dict | None:
        """The outputs of a finished run of the same account with ``run``'s cache key whose files are all
        still stored; None when there is none (or the storage cannot say: then the run runs)."""
        hit = conn.execute(_CACHE_HIT, {"cache_key": run.cache_key, "account_id": run.execution_account_id, "id": run.id}).first()
        if hit is None or not hit.outputs:
            return None
        ids = hit.outputs.get("images", [])
        rows = conn.execute(_FILE_KEYS, {"ids": ids}).all()
        try:
            if len(rows) != len(ids) or not all(self.storage.exists(r.storage_key) for r in rows):
                return None
        except OSError:
            log.warning("could not check the cached outputs of node %s; it runs", run.node_id, exc_info=True)
            return None
        return hit.outputs

    def _load_inputs(self, run) -> dict[str, list[Image.Image]]:
        inputs: dict[str, list[Image.Image]] = {}
        if not run.links:
            return inputs
        with self.db.read() as conn:
            for name, (src, out) in run.links.items():
                up = conn.execute(
                    sa.select(node_runs.c.outputs).where(node_runs.c.execution_id == run.execution_id, node_runs.c.node_id == src)
                ).scalar_one()
                ids = (up or {}).get(out, [])
                rows = {r.id: r for r in conn.execute(sa.select(files).where(files.c.id.in_(ids)))}
                inputs[name] = [Image.open(io.BytesIO(self.storage.get(rows[i].storage_key))) for i in ids]
                with decode_slot():  # bounded with every other decode in this process
                    for im in inputs[name]:
                        im.load()
        return inputs

    def _store_images(self, run, images: list[Image.Image], fmt: str, metadata: dict) -> list[dict]:
        """Write ``images`` to storage; their ``files`` rows, for the caller to insert in its transaction."""
        return self._put_images(self._encode_images(run, images, fmt, metadata))

    def _put_images(self, encoded: list[tuple[dict, bytes]]) -> list[dict]:
        """Write encoded images to storage; their ``files`` rows."""
        for row, data in encoded:
            self.storage.put(row["storage_key"], data)
        return [row for row, _ in encoded]

    def _encode_images(self, run, images: list[Image.Image], fmt: str, metadata: dict) -> list[tuple[dict, bytes]]:
        """``images`` encoded, each with its ``files`` row to be."""
        account = run.execution_account_id
        now = time.time()
        encoded = []
        for i, image in enumerate(images):
            fid = new_id()
            meta = dict(metadata)
            if "seed" in meta and len(images) > 1:
                meta["seed"] = str(int(meta["seed"]) + i)
            provenance = self.services.provenance
            if provenance is not None:  # watermark and C2PA manifest where the operator turned them on
                data = provenance.encode(image, fmt, meta, quality=92, node=run.node_type)
            else:
                data = encode_image(image, fmt, quality=92, metadata=meta)
            key = f"{account}/{run.execution_id}/{fid}.{FILE_EXTENSIONS[fmt]}"
            encoded.append((
                dict(
                    id=fid,
                    account_id=account,
                    execution_id=run.execution_id,
                    node_run_id=run.id,
                    storage_key=key,
                    content_type=MIME_TYPES[fmt],
                    size=len(data),
                    width=image.width,
                    height=image.height,
                    meta=meta,
                    created_at=now,
                    expires_at=now + self.file_retention_s,
                ),
                data,
            ))
        return encoded

    def _still_mine(self, conn, run) -> bool:
        """Whether ``run`` is still RUNNING under this claim (row locked on PostgreSQL until the transaction ends).

        Not when it was cancelled or finished meanwhile, nor when another worker took it
        over after this one passed its deadline (a later attempt)."""
        current = conn.execute(
            sa.select(node_runs.c.status, node_runs.c.attempts).where(node_runs.c.id == run.id).with_for_update()
        ).first()
        return current is not None and NodeStatus(current.status) == NodeStatus.RUNNING and current.attempts == run.attempts

    def _finish(self, run, outputs: dict, cost_micro: int, cached: bool, file_rows: list[dict] | None = None) -> None:
        def write() -> list[NodeTask]:
            with self.db.transaction() as conn:
                if file_rows:  # the outputs' rows, with the result or (not ours any more) for the janitor
                    conn.execute(sa.insert(files), file_rows)
                if not self._still_mine(conn, run):
                    return []  # cancelled or taken over meanwhile: outputs stay unreferenced
                return self._cached_successors(conn, self.lifecycle.succeed_node(conn, run, outputs, cost_micro, cached))

        self._publish(run, retry_when_busy(write, self.busy_retry_s, f"completion of node {run.node_id}"))

    def _publish(self, run, tasks: list[NodeTask]) -> None:
        """Hand the runs that ``run``'s completion made runnable to the queue."""
        if not tasks:
            return
        try:
            publish_all(self.enqueue, tasks)
        except Exception as exc:  # broker unreachable: the runs stay QUEUED, unpublished; the sweeper sends them
            log.warning("could not publish the node runs after %s of execution %s (%s); they will be published again", run.id, run.execution_id, exc)

    def _fail(self, run, code: str, message: str, cancelled: bool = False) -> None:
        def write() -> None:
            with self.db.transaction() as conn:
                if not self._still_mine(conn, run):
                    return
                self.lifecycle.fail_node(conn, run, code, message, cancelled=cancelled)

        retry_when_busy(write, self.busy_retry_s, f"failure of node {run.node_id}")


_pipelined = threading.local()


@functools.cache
def _encoder() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that encode finished images while they are checked (see :meth:`NodeRunner._record_now`)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="pixelmill-encode")


if hasattr(os, "register_at_fork"):  # a forked worker process makes its own threads
    os.register_at_fork(after_in_child=_encoder.cache_clear)


@contextlib.contextmanager
def _pipelining() -> Iterator[None]:
    _pipelined.on = True
    try:
        yield
    finally:
        _pipelined.on = False


class Finisher:
    """One thread that finishes node runs for the worker threads of this process.

    A run's outputs are checked (output moderation), encoded, stored and recorded
    there while its worker thread already starts the next run: on a GPU the next
    generation overlaps the last one's CPU work, on a CPU the core left to the API
    does it.  At most ``depth`` runs wait to be finished; a worker handing over
    more waits for room, so finishing can never fall behind without bound.  Only
    for embedded mode, where a crash loses nothing the restart does not re-queue:
    a scale-out worker acknowledges its message only once the run is recorded.
    """

    def __init__(self, depth: int = 2):
        self._q: "queue.Queue[tuple[Callable[[], None], str] | None]" = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pixelmill-finisher", daemon=True)
            self._thread.start()

    def submit(self, fn: Callable[[], None], what: str) -> None:
        if self._thread is None:  # not started (or stopped): finish here
            fn()
            return
        self._q.put((fn, what))

    def join(self) -> None:
        """Wait until every run handed over is finished."""
        self._q.join()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was handed over, then stop the thread."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(None)
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                fn, what = item
                try:
                    fn()
                except Exception:  # e.g. the database stayed busy: the run stays RUNNING and is taken over after its deadline
                    log.exception("finishing %s failed", what)
            finally:
                self._q.task_done()
