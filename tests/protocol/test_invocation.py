"""Invocation status rules, as a table."""

import pytest

from corral.errors import ConflictError
from corral.protocol import Detail, Status, command_status, counts_as_error, is_final, transition


@pytest.mark.parametrize(
    ("current", "detail", "expected"),
    [
        (Status.PENDING, Detail.IN_PROGRESS, Status.IN_PROGRESS),
        (Status.PENDING, Detail.DELIVERY_TIMED_OUT, Status.TIMED_OUT),
        (Status.PENDING, Detail.TERMINATED, Status.CANCELLED),
        (Status.PENDING, Detail.UNDELIVERABLE, Status.FAILED),
        (Status.IN_PROGRESS, Detail.EXECUTION_TIMED_OUT, Status.TIMED_OUT),
        (Status.IN_PROGRESS, Detail.CANCELLING, Status.CANCELLING),
        (Status.CANCELLING, Detail.CANCELLED, Status.CANCELLED),
        (Status.CANCELLING, Detail.SUCCESS, Status.SUCCESS),
    ],
)
def test_allowed_transitions(current: Status, detail: Detail, expected: Status) -> None:
    assert transition(current, detail) == (expected, detail)


@pytest.mark.parametrize(
    ("current", "detail"),
    [
        (Status.SUCCESS, Detail.FAILED),
        (Status.CANCELLED, Detail.IN_PROGRESS),
        (Status.TIMED_OUT, Detail.SUCCESS),
        (Status.IN_PROGRESS, Detail.PENDING),
    ],
)
def test_forbidden_transitions(current: Status, detail: Detail) -> None:
    with pytest.raises(ConflictError):
        transition(current, detail)


@pytest.mark.parametrize(
    ("detail", "counts"),
    [
        (Detail.FAILED, True),
        (Detail.EXECUTION_TIMED_OUT, True),
        (Detail.DELIVERY_TIMED_OUT, False),
        (Detail.UNDELIVERABLE, False),
        (Detail.INVALID_PLATFORM, False),
        (Detail.ACCESS_DENIED, False),
        (Detail.TERMINATED, False),
        (Detail.SUCCESS, False),
    ],
)
def test_only_real_failures_count_against_max_errors(detail: Detail, counts: bool) -> None:
    assert counts_as_error(detail) is counts


@pytest.mark.parametrize(
    ("statuses", "cancelling", "expected"),
    [
        ([], False, Status.PENDING),
        ([Status.PENDING, Status.PENDING], False, Status.PENDING),
        ([Status.SUCCESS, Status.PENDING], False, Status.IN_PROGRESS),
        ([Status.SUCCESS, Status.SUCCESS], False, Status.SUCCESS),
        ([Status.SUCCESS, Status.FAILED], False, Status.FAILED),
        ([Status.SUCCESS, Status.TIMED_OUT], False, Status.TIMED_OUT),
        ([Status.FAILED, Status.TIMED_OUT], False, Status.FAILED),
        ([Status.SUCCESS, Status.IN_PROGRESS], True, Status.CANCELLING),
        ([Status.SUCCESS, Status.CANCELLED], True, Status.CANCELLED),
        ([Status.FAILED, Status.CANCELLED], False, Status.FAILED),
    ],
)
def test_command_status(statuses: list[Status], cancelling: bool, expected: Status) -> None:
    assert command_status(statuses, cancelling) == expected
    assert is_final(expected) == (
        expected in {Status.SUCCESS, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED}
    )
