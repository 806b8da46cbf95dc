"""The queue interface both engines use: the embedded thread queue and Celery."""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from pixelmill.engine.lifecycle import NodeTask

DEFAULT_QUEUE = "default"

TaskHandler = Callable[[NodeTask], None]


@runtime_checkable
class TaskQueue(Protocol):
    """Carries ``NodeTask`` messages from whoever makes work runnable to whoever runs it.

    ``handler`` is what a consuming process calls for each delivered task (the
    runtime sets it to ``NodeRunner.run``).  Delivery is at least once: a
    handler must treat a second delivery of the same task as a no-op.
    """

    handler: TaskHandler | None

    def enqueue(self, task: NodeTask) -> None:
        """Publish one task; returns once the queue has accepted it."""

    def start(self) -> None:
        """Begin consuming in this process, where the queue does that (embedded threads)."""

    def stop(self) -> None:
        """Stop consuming and release connections."""
