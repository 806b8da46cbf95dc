"""Logs: one JSON object per line (for collectors), or plain text when writing to a terminal.

Every line carries the request id of the HTTP request being served
(:data:`request_id`, set by the request-id middleware and carried into worker
threads), and the account, execution and node ids a record names in ``extra``.
:class:`StateChangeLog` is a lifecycle hook that writes one line per state change.

A server's lines are formatted and written by a thread of their own
(:class:`BackgroundHandler`): the request that logs only hands the record over, so a slow or
stalled reader of stderr (a paused log collector, a full pipe, a terminal held with Ctrl-S)
never holds up the event loop or a generation.  While the reader is stalled, up to
:data:`BackgroundHandler.CAPACITY` lines wait; lines beyond are dropped and counted, and the
count is written once the reader drains.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import sys
import threading
import time
import weakref
from contextvars import ContextVar
from typing import Any, Iterator

from pixelmill.engine.hooks import Hooks, LifecycleEvent

request_id: ContextVar[str | None] = ContextVar("pixelmill_request_id", default=None)
_FIELDS = ("account_id", "execution_id", "node_id", "event")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            out["request_id"] = rid
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted where it was logged (BackgroundHandler)
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


class BackgroundHandler(logging.Handler):
    """Writes records to a stream from a thread of its own.

    :meth:`emit` runs in the logging thread and only settles what belongs to that moment
    (the message with its arguments, the request id of the logging context, an exception's
    traceback), then queues the record; the writer thread formats and writes it.  A full
    queue drops the record and counts it.  :meth:`flush` waits until every queued line is
    written (``logging.shutdown`` calls it at exit).  A forked child starts a writer of its own.

    The queue is a ``SimpleQueue`` (no Python lock or condition per line), and the writer
    writes whatever gathered while it was writing before it waits again.  It does not wait
    for more lines to gather, so a process that dies without a flush loses as little as it
    can.  (A server stopped by SIGTERM dies by that signal once uvicorn has shut down, with no
    exit handlers; ``pixelmill serve`` calls :func:`flush_logs` just before.)

    :meth:`close` stops the writer, yet a closed handler that still gets records starts it
    again, as a closed ``StreamHandler`` goes on writing: ``logging.config.dictConfig`` (which
    uvicorn calls at start) closes every handler it finds but leaves the root's attached."""

    #: lines that may wait for a stalled reader before new ones are dropped
    CAPACITY = 10_000
    #: the longest :meth:`flush` waits for a stalled reader (a process that exits does not hang on it)
    FLUSH_WAIT_S = 10.0

    def __init__(self, stream, formatter: logging.Formatter, capacity: int = CAPACITY) -> None:
        super().__init__()
        self.target = logging.StreamHandler(stream)
        self.target.setFormatter(formatter)
        self.capacity = capacity
        self._dropped = 0
        self._dropped_lock = threading.Lock()
        self._writer_lock = threading.Lock()  # starting and stopping the writer
        self._start()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (h := ref()) is not None and not h._closed and h._start())

    def _start(self) -> None:
        # records, flush markers (an Event the writer sets on reaching it) and None (stop)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._start_writer()

    def _start_writer(self) -> None:
        self._closed = False
        self._writer = threading.Thread(target=self._write, name="pixelmill-log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record = copy.copy(record)  # the handlers after this one see the record as it was
            record.message = record.getMessage()
            record.msg, record.args = record.message, None
            if not getattr(record, "request_id", None):
                record.request_id = request_id.get()
            if record.exc_info:
                record.exc_text = record.exc_text or self.target.formatter.formatException(record.exc_info)
                record.exc_info = None  # the traceback's frames are not kept alive in the queue
            if self._closed:  # closed but still in use (see the class docstring): write again
                with self._writer_lock:
                    if self._closed:
                        self._start_writer()
            with self._dropped_lock:  # the first line queued after a gap carries the gap's count
                if self._queue.qsize() >= self.capacity:
                    self._dropped += 1
                else:
                    record.dropped_before, self._dropped = self._dropped, 0
                    self._queue.put_nowait(record)
        except Exception:
            self.handleError(record)

    def _write(self) -> None:
        q = self._queue
        while True:
            item = q.get()  # idle: wait for the next line
            while True:
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()  # a flush: every line queued before it is written
                else:
                    self._write_one(item)
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break

    def _write_one(self, record: logging.LogRecord) -> None:
        try:
            if record.dropped_before:
                self.target.handle(logging.makeLogRecord({
                    "name": "pixelmill.logs", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{record.dropped_before} log lines dropped while the log stream was not read",
                }))
            self.target.handle(record)
        except Exception:
            pass  # the stream itself failed: nothing to report it to

    def flush(self) -> None:
        """Wait until every queued line is written (at most :data:`FLUSH_WAIT_S`)."""
        if not self._writer.is_alive() or threading.current_thread() is self._writer:
            return
        written = threading.Event()
        self._queue.put_nowait(written)
        written.wait(self.FLUSH_WAIT_S)

    def close(self) -> None:
        with self._writer_lock:
            self._closed = True
            if self._writer.is_alive():
                stalled = self._queue.qsize() >= self.capacity
                self._queue.put_nowait(None)
                if not stalled:  # a stalled reader: the daemon writer ends with the process
                    self._writer.join(timeout=self.FLUSH_WAIT_S)
        super().close()


def configure_logging(level: int = logging.INFO, json_lines: bool | None = None, stream=None) -> None:
    """Root logging for a server process: JSON lines unless ``stream`` (stderr) is a terminal,
    written by a thread of their own (:class:`BackgroundHandler`)."""
    stream = stream or sys.stderr
    if json_lines is None:
        json_lines = not (hasattr(stream, "isatty") and stream.isatty())
    formatter = JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BackgroundHandler):
            old.flush()
            old.close()
    root.handlers[:] = [BackgroundHandler(stream, formatter)]
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warnings.warn() is a log line too (logger "py.warnings"), not bare stderr


def flush_logs() -> None:
    """Wait until the root handlers have written what they hold (a :class:`BackgroundHandler`
    waits at most :data:`BackgroundHandler.FLUSH_WAIT_S` for a stalled reader)."""
    for handler in list(logging.getLogger().handlers):
        try:
            handler.flush()
        except Exception:
            pass


def _model_library_logging() -> Iterator[Any]:
    """The logging modules of diffusers and transformers, of those installed (an API node has neither)."""
    import importlib

    for name in ("diffusers", "transformers"):
        try:
            yield importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue


def no_loading_bars() -> None:
    """Model loading in this process shows no progress bars (downloads and weights alike)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for library in _model_library_logging():
        library.disable_progress_bar()


def adopt_model_library_logs() -> None:
    """Before a model is loaded: where this process logs through :func:`configure_logging` (its
    root handler is a :class:`BackgroundHandler`), the model libraries' lines go the same way
    (JSON lines off a terminal, written off the event loop) instead of through the stderr
    handlers diffusers, transformers and PyTorch install for themselves, and their loading
    progress bars are off (a bar is not a log line).  A process that did not configure
    pixelmill's logging (a library user's) keeps theirs."""
    if not any(isinstance(h, BackgroundHandler) for h in logging.getLogger().handlers):
        return
    no_loading_bars()
    for library in _model_library_logging():
        library.disable_default_handler()
        library.enable_propagation()
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if (name == "torch" or name.startswith("torch.")) and isinstance(logger, logging.Logger):
            own = [h for h in logger.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.__stderr__)]
            if own:
                for handler in own:
                    logger.removeHandler(handler)
                logger.propagate = True


class StateChangeLog(Hooks):
    """One log line per execution and node state change (progress events excepted), after it committed."""

    log = logging.getLogger("pixelmill.events")

    def after_commit(self, event: LifecycleEvent) -> None:
        if event.type in ("execution.progress", "node.preview"):
            return
        extra = {"execution_id": event.execution_id, "event": event.type}
        if "node" in event.data:
            extra["node_id"] = event.data["node"]
        if event.data.get("error"):
            self.log.info("%s %s: %s", event.type, event.execution_id, event.data["error"], extra=extra)
        else:
            self.log.info("%s %s", event.type, event.execution_id, extra=extra)
