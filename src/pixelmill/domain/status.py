"""Execution and node-run statuses with their named transitions."""

from __future__ import annotations

from enum import StrEnum


class IllegalTransition(Exception):
    pass


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_terminal(self) -> bool:
        return self in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)

    @classmethod
    def active(cls) -> list[str]:
        """The statuses of executions still in flight (queued or running), for ``status IN (...)`` queries."""
        return [cls.QUEUED.value, cls.RUNNING.value]

    # named transitions: each returns the new status or raises IllegalTransition
    def start(self) -> "ExecutionStatus":
        return _move(self, ExecutionStatus.RUNNING, {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING})

    def succeed(self) -> "ExecutionStatus":
        return _move(self, ExecutionStatus.SUCCEEDED, {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING})

    def fail(self) -> "ExecutionStatus":
        return _move(self, ExecutionStatus.FAILED, {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING})

    def cancel(self) -> "ExecutionStatus":
        return _move(self, ExecutionStatus.CANCELLED, {ExecutionStatus.QUEUED, ExecutionStatus.RUNNING})


class NodeStatus(StrEnum):
    WAITING = "waiting"  # its inputs are not ready yet
    QUEUED = "queued"  # handed to the queue
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # an upstream node failed or was cancelled

    def is_terminal(self) -> bool:
        return self in (NodeStatus.SUCCEEDED, NodeStatus.FAILED, NodeStatus.CANCELLED, NodeStatus.SKIPPED)

    def enqueue(self) -> "NodeStatus":
        return _move(self, NodeStatus.QUEUED, {NodeStatus.WAITING, NodeStatus.QUEUED, NodeStatus.RUNNING})

    def start(self) -> "NodeStatus":
        return _move(self, NodeStatus.RUNNING, {NodeStatus.QUEUED, NodeStatus.RUNNING})

    def succeed(self) -> "NodeStatus":
        return _move(self, NodeStatus.SUCCEEDED, {NodeStatus.RUNNING, NodeStatus.QUEUED})

    def fail(self) -> "NodeStatus":
        return _move(self, NodeStatus.FAILED, {NodeStatus.RUNNING, NodeStatus.QUEUED, NodeStatus.WAITING})

    def cancel(self) -> "NodeStatus":
        return _move(self, NodeStatus.CANCELLED, {NodeStatus.WAITING, NodeStatus.QUEUED, NodeStatus.RUNNING})

    def skip(self) -> "NodeStatus":
        return _move(self, NodeStatus.SKIPPED, {NodeStatus.WAITING, NodeStatus.QUEUED})


def _move(current, target, allowed_from):
    if current not in allowed_from:
        raise IllegalTransition(f"cannot move from {current.value} to {target.value}")
    return target
