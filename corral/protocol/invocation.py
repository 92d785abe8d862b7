"""Invocation statuses, status details and the legal transitions between them.

The vocabulary is Systems Manager's (see ARCHITECTURE.md). The table below is the
single source of truth: the dispatcher asks `transition()` before it changes a
status, and a report that would move a final invocation is ignored.
"""

from __future__ import annotations

import enum

from corral.errors import ConflictError


class Status(enum.StrEnum):
    """An invocation's (or a command's) status."""

    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    DELAYED = "Delayed"
    SUCCESS = "Success"
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"


class Detail(enum.StrEnum):
    """An invocation's status detail."""

    PENDING = "Pending"
    IN_PROGRESS = "InProgress"
    DELAYED = "Delayed"
    SUCCESS = "Success"
    FAILED = "Failed"
    DELIVERY_TIMED_OUT = "DeliveryTimedOut"
    EXECUTION_TIMED_OUT = "ExecutionTimedOut"
    UNDELIVERABLE = "Undeliverable"
    INVALID_PLATFORM = "InvalidPlatform"
    ACCESS_DENIED = "AccessDenied"
    TERMINATED = "Terminated"
    CANCELLING = "Cancelling"
    CANCELLED = "Cancelled"


FINAL: frozenset[Status] = frozenset(
    {Status.SUCCESS, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED}
)

# The status each detail belongs to.
STATUS_OF: dict[Detail, Status] = {
    Detail.PENDING: Status.PENDING,
    Detail.IN_PROGRESS: Status.IN_PROGRESS,
    Detail.DELAYED: Status.DELAYED,
    Detail.SUCCESS: Status.SUCCESS,
    Detail.FAILED: Status.FAILED,
    Detail.DELIVERY_TIMED_OUT: Status.TIMED_OUT,
    Detail.EXECUTION_TIMED_OUT: Status.TIMED_OUT,
    Detail.UNDELIVERABLE: Status.FAILED,
    Detail.INVALID_PLATFORM: Status.FAILED,
    Detail.ACCESS_DENIED: Status.FAILED,
    Detail.TERMINATED: Status.CANCELLED,
    Detail.CANCELLING: Status.CANCELLING,
    Detail.CANCELLED: Status.CANCELLED,
}

# from-status -> statuses it may move to. Final statuses move nowhere.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(
        {
            Status.IN_PROGRESS,
            Status.DELAYED,
            Status.SUCCESS,
            Status.FAILED,
            Status.TIMED_OUT,
            Status.CANCELLING,
            Status.CANCELLED,
        }
    ),
    Status.DELAYED: frozenset(
        {
            Status.PENDING,
            Status.IN_PROGRESS,
            Status.SUCCESS,
            Status.FAILED,
            Status.TIMED_OUT,
            Status.CANCELLING,
            Status.CANCELLED,
        }
    ),
    Status.IN_PROGRESS: frozenset(
        {Status.SUCCESS, Status.FAILED, Status.TIMED_OUT, Status.CANCELLING, Status.CANCELLED}
    ),
    Status.CANCELLING: frozenset(
        {Status.SUCCESS, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED}
    ),
    Status.SUCCESS: frozenset(),
    Status.FAILED: frozenset(),
    Status.TIMED_OUT: frozenset(),
    Status.CANCELLED: frozenset(),
}


def is_final(status: Status | str) -> bool:
    """True when nothing can change this invocation any more."""
    return Status(status) in FINAL


def can_transition(current: Status | str, new: Status | str) -> bool:
    """True when the table allows `current` -> `new`."""
    return Status(new) in TRANSITIONS[Status(current)]


def transition(current: Status | str, detail: Detail | str) -> tuple[Status, Detail]:
    """The (status, detail) after moving to `detail`; ConflictError if the table forbids it."""
    new_detail = Detail(detail)
    new_status = STATUS_OF[new_detail]
    if not can_transition(current, new_status):
        raise ConflictError(f"invocation cannot move from {current} to {new_status}")
    return new_status, new_detail


def counts_as_error(detail: Detail | str) -> bool:
    """Only real failures and execution timeouts count against MaxErrors."""
    return Detail(detail) in (Detail.FAILED, Detail.EXECUTION_TIMED_OUT)


def command_status(statuses: list[Status], cancelling: bool = False) -> Status:
    """A command's overall status from its invocations' statuses (Systems Manager's rules)."""
    if not statuses:
        return Status.PENDING
    if not all(s in FINAL for s in statuses):
        if cancelling:
            return Status.CANCELLING
        if all(s in (Status.PENDING, Status.DELAYED) for s in statuses):
            return Status.PENDING
        return Status.IN_PROGRESS
    if any(s == Status.CANCELLED for s in statuses) and cancelling:
        return Status.CANCELLED
    if all(s == Status.SUCCESS for s in statuses):
        return Status.SUCCESS
    if any(s == Status.TIMED_OUT for s in statuses) and not any(
        s == Status.FAILED for s in statuses
    ):
        return Status.TIMED_OUT
    if any(s == Status.FAILED for s in statuses):
        return Status.FAILED
    return Status.CANCELLED
