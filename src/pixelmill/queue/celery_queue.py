"""The scale-out queue: Celery over Redis carrying one task type, ``pixelmill.run_node``.

API nodes only publish.  ``pixelmill worker`` processes consume: each one
listens on the queues of the models it holds warm (``model.<name>``) and on
``default`` for model-free nodes.

Delivery is at least once.  A message is acknowledged only after its node run
has finished (``acks_late``); a worker that dies mid-run leaves the message
unacknowledged and Redis hands it to another worker once the visibility
timeout has passed.  ``NodeRunner.run`` treats a repeated delivery of a
finished node run as a no-op, and the ledger settles each execution under one
entry key, so a repeat never runs a finished node again nor bills twice.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence, TypedDict

from celery import Celery
from celery.worker.control import control_command
from sqlalchemy.exc import OperationalError

from pixelmill.config import Settings
from pixelmill.engine.lifecycle import NodeTask
from pixelmill.queue.base import DEFAULT_QUEUE, TaskHandler

log = logging.getLogger("pixelmill.queue")

TASK_NAME = "pixelmill.run_node"
POOLS = ("threads", "solo")
MODEL_CONTROL = "pixelmill_model"
"""The remote-control command (a broadcast to every worker) that loads or unloads a model."""

ModelControlHandler = Callable[[str, str], dict[str, Any]]


@control_command(args=[("model", str), ("action", str)], signature="<model> <load|unload>")
def pixelmill_model(state, model: str, action: str) -> dict[str, Any]:
    """Load or unload ``model`` on this worker (runs in the worker's consumer: answers at once)."""
    handler: ModelControlHandler | None = getattr(state.app, "pixelmill_model_control", None)
    if handler is None:
        return {"outcome": "not_served"}
    try:
        return handler(model, action)
    except Exception as exc:  # the caller reads the reply; the consumer must not die
        log.exception("model control %s %s failed", action, model)
        return {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}


class NodeTaskMessage(TypedDict):
    """A ``NodeTask`` as it travels on the wire (JSON)."""

    node_run_id: str
    execution_id: str
    queue: str


def to_message(task: NodeTask) -> NodeTaskMessage:
    return {"node_run_id": task.node_run_id, "execution_id": task.execution_id, "queue": task.queue or DEFAULT_QUEUE}


def from_message(message: Any) -> NodeTask:
    """The ``NodeTask`` a message carries; ``ValueError`` for anything malformed."""
    if not isinstance(message, dict):
        raise ValueError(f"a node task message is a JSON object, got {type(message).__name__}")
    fields = {}
    for name in ("node_run_id", "execution_id"):
        value = message.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"node task message lacks {name!r}")
        fields[name] = value
    queue = message.get("queue") or DEFAULT_QUEUE
    if not isinstance(queue, str):
        raise ValueError("node task message has a non-string 'queue'")
    return NodeTask(fields["node_run_id"], fields["execution_id"], queue)


def min_visibility_timeout(node_timeout_s: float) -> float:
    """The shortest visibility timeout a worker accepts: the node deadline plus a margin.

    Shorter, Redis would hand a message out again while its node still legitimately
    runs (or while a duplicate waits for the deadline of a run it found busy), and
    every such hand-out is another copy of the task."""
    return float(node_timeout_s) + max(2.0, 0.1 * float(node_timeout_s))


def check_visibility_timeout(visibility_timeout_s: float, node_timeout_s: float) -> None:
    """ValueError when ``visibility_timeout_s`` is below :func:`min_visibility_timeout`."""
    shortest = min_visibility_timeout(node_timeout_s)
    if visibility_timeout_s < shortest:
        raise ValueError(
            f"visibility timeout {visibility_timeout_s:g} s is shorter than the node deadline "
            f"(node_timeout_s = {node_timeout_s:g} s) plus its margin: give at least {shortest:g} s, "
            "or leave it out to derive it from node_timeout_s"
        )


def default_visibility_timeout(node_timeout_s: float) -> int:
    """How long an unacknowledged message waits before workers hand it out again.

    Well above the node deadline, so a node that is still legitimately running
    is never handed to a second worker: the runner's deadline ends it first.
    """
    return max(3600, int(node_timeout_s * 2) + 300)


def transport_options(visibility_timeout: float) -> dict[str, Any]:
    """Redis transport options: the visibility timeout and how often workers look for expired messages.

    Kombu's default sweep runs about every 100 s; here it runs every quarter
    of the timeout (1 to 30 s), so a dead worker's task comes back soon after
    the timeout rather than minutes later.
    """
    return {
        "visibility_timeout": float(visibility_timeout),
        "unacked_restore_interval": max(1.0, min(30.0, visibility_timeout / 4)),
        "unacked_restore_throttle": 1,
    }


def make_celery_app(settings: Settings) -> Celery:
    """A Celery application for pixelmill's broker, configured for at-least-once node runs."""
    app = Celery("pixelmill", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # state lives in the database, not in a result backend
        task_acks_late=True,  # acknowledge after the node run finished
        # a lost pool child's message goes back to the queue; when the whole worker process
        # dies (threads/solo pools) the visibility timeout brings it back instead
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a busy GPU worker does not sit on queued work
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        broker_transport_options=transport_options(default_visibility_timeout(settings.node_timeout_s)),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def _worker_class(app: Celery) -> type:
    """``app.Worker`` whose stop signals print nothing: Celery's SIGTERM and SIGQUIT handlers write
    a plain ``worker: Warm shutdown (MainProcess)`` to stdout, a non-JSON line in a log collector's
    stream.  The same handlers are installed without it, and :meth:`CeleryQueue.worker` logs the
    stop once the worker has finished its tasks (a line logged from the signal handler itself could
    wait forever on a lock the interrupted thread holds)."""
    from celery.apps import worker as celery_worker

    class Worker(app.Worker):  # type: ignore[name-defined,misc]
        def install_platform_tweaks(self, worker: Any) -> None:
            super().install_platform_tweaks(worker)
            celery_worker.install_worker_term_handler(worker, verbose=False)
            celery_worker.install_worker_term_hard_handler(worker, verbose=False)

    return Worker


class CeleryQueue:
    """``TaskQueue`` over Celery + Redis.  Publishing works everywhere; ``worker()`` consumes."""

    def __init__(self, settings: Settings, handler: TaskHandler | None = None):
        self.settings = settings
        self.handler = handler
        self.app = make_celery_app(settings)
        self.run_node = self._register_task()

    def _register_task(self):
        queue = self

        @self.app.task(
            name=TASK_NAME,
            bind=True,
            shared=False,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            # the database was unreachable: try again later rather than lose the run
            autoretry_for=(OperationalError,),
            retry_backoff=2,
            retry_backoff_max=60,
            max_retries=20,
        )
        def run_node(task_self, message: NodeTaskMessage) -> None:
            handler = queue.handler
            if handler is None:
                raise RuntimeError("this process has no node runner: start it with `pixelmill worker`")
            from pixelmill.engine.runner import NodeBusy

            try:
                handler(from_message(message))
            except NodeBusy as busy:
                # Another worker runs this node (or did, and died).  This message is acknowledged
                # and replaced by one copy due just after the run's deadline: if the run is finished
                # by then that copy is dropped, if its worker died the copy takes it over (one
                # winner, see NodeRunner._claim).  The countdown is shorter than the visibility
                # timeout (the worker refuses shorter ones), so Redis never hands the copy out
                # twice while it waits.
                raise task_self.retry(countdown=busy.retry_after_s + 1.0, max_retries=None) from None

        return run_node

    # --- TaskQueue --------------------------------------------------------
    def enqueue(self, task: NodeTask) -> None:
        """Publish to the task's queue (``model.<name>`` or ``default``)."""
        self.run_node.apply_async(args=[to_message(task)], queue=task.queue or DEFAULT_QUEUE)

    def start(self) -> None:
        """Nothing to start: consuming happens in ``pixelmill worker`` (see ``worker()``)."""

    def stop(self) -> None:
        """Release broker connections held for publishing."""
        self.app.close()

    # --- model control ------------------------------------------------------
    def serve_model_control(self, handler: ModelControlHandler) -> None:
        """This worker answers :data:`MODEL_CONTROL` broadcasts with ``handler(model, action)``."""
        self.app.pixelmill_model_control = handler  # type: ignore[attr-defined]

    def broadcast_model_control(self, model: str, action: str, workers: int, timeout_s: float = 5.0) -> dict[str, dict[str, Any]]:
        """Ask every worker to load or unload ``model``; their replies by worker name (waits for ``workers``
        replies or ``timeout_s``)."""
        replies = self.app.control.broadcast(
            MODEL_CONTROL, arguments={"model": model, "action": action}, reply=True, timeout=timeout_s, limit=max(1, workers) if workers else None
        )
        out: dict[str, dict[str, Any]] = {}
        for reply in replies or []:
            for worker, answer in reply.items():
                out[worker] = answer if isinstance(answer, dict) else {"outcome": "failed", "error": str(answer)}
        return out

    # --- consuming --------------------------------------------------------
    def worker(
        self,
        queues: Sequence[str],
        concurrency: int = 1,
        pool: str = "threads",
        hostname: str | None = None,
        loglevel: str = "INFO",
        visibility_timeout_s: float | None = None,
    ) -> int:
        """Run a Celery worker in this process until it is told to stop; returns its exit code.

        ``pool`` is ``threads`` (default) or ``solo``: models stay loaded in
        this one process, which holds the GPU.  Forking pools are not offered:
        CUDA and many torch set-ups break in forked children.

        ``visibility_timeout_s`` overrides how long this worker lets a message
        of a dead worker wait before handing it out again (default: from
        ``node_timeout_s``).  Every worker of a deployment should use the same
        value, longer than any node run.
        """
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not queues:
            raise ValueError("a worker needs at least one queue")
        from celery.concurrency import get_implementation

        if visibility_timeout_s is not None:
            check_visibility_timeout(visibility_timeout_s, self.settings.node_timeout_s)
            self.app.conf.broker_transport_options = transport_options(visibility_timeout_s)
        worker = _worker_class(self.app)(
            queues=list(queues),
            concurrency=concurrency,
            pool_cls=get_implementation(pool),
            hostname=hostname,
            loglevel=loglevel,
            without_mingle=True,
            without_gossip=True,
            quiet=True,  # no plain-text start banner: what it shows is logged (queues, broker, concurrency)
        )
        worker.start()
        log.info("worker %s stopped (exit code %d)", hostname or worker.hostname, int(worker.exitcode or 0))
        return int(worker.exitcode or 0)
