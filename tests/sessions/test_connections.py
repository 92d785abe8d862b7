"""The relay's ledger of a port session's connections, as pure code: the rule table,
the metadata it keeps and what it refuses."""

from __future__ import annotations

import pytest

from corral.protocol import streams
from corral.sessions.connections import ConnectionLedger, Verdict

NODE, OPERATOR = True, False
OPEN = streams.OpenFrame(1, "localhost", 22)


def ledger_with_stream_1() -> ConnectionLedger:
    ledger = ConnectionLedger("localhost", 22, max_open=2)
    assert ledger.inspect(OPEN, OPERATOR, 10.0).verdict is Verdict.FORWARD
    return ledger


@pytest.mark.parametrize(
    ("frame", "from_node", "verdict"),
    [
        # what a healthy connection exchanges
        (streams.DataFrame(1, 0, b"hi"), OPERATOR, Verdict.FORWARD),
        (streams.DataFrame(1, 0, b"hi"), NODE, Verdict.FORWARD),
        (streams.AckFrame(1, 0), NODE, Verdict.FORWARD),
        (streams.EofFrame(1, 0), OPERATOR, Verdict.FORWARD),
        (streams.OpenFailedFrame(1, "connection refused"), NODE, Verdict.FORWARD),
        (streams.OpenFailedFrame(1, "reset"), OPERATOR, Verdict.FORWARD),
        # frames on streams never opened, or frames that have no place in a port session
        (streams.DataFrame(2, 0, b"x"), OPERATOR, Verdict.VIOLATION),
        (streams.DataFrame(0, 0, b"x"), NODE, Verdict.VIOLATION),
        (streams.AckFrame(7, 0), NODE, Verdict.VIOLATION),
        (streams.EofFrame(2, 0), NODE, Verdict.VIOLATION),
        (streams.OpenFailedFrame(2, "no"), NODE, Verdict.VIOLATION),
        (streams.ResizeFrame(80, 24), OPERATOR, Verdict.VIOLATION),
        (streams.ResumeFrame(), NODE, Verdict.VIOLATION),
        (streams.ExitFrame(0), NODE, Verdict.VIOLATION),  # the relay handles EXIT itself
        # OPEN: only from the operator, ids only grow (an open one may come again, same target)
        (streams.OpenFrame(2, "localhost", 22), NODE, Verdict.VIOLATION),
        (streams.OpenFrame(1, "localhost", 22), OPERATOR, Verdict.FORWARD),
        (streams.OpenFrame(1, "localhost", 23), OPERATOR, Verdict.VIOLATION),
        # a gap in a stream
        (streams.DataFrame(1, 5, b"x"), OPERATOR, Verdict.VIOLATION),
        (streams.OpenFrame(2, "localhost", 22), OPERATOR, Verdict.FORWARD),
        (streams.OpenFrame(9, "localhost", 22), OPERATOR, Verdict.FORWARD),
        # ... and only to the session's target
        (streams.OpenFrame(2, "localhost", 23), OPERATOR, Verdict.REFUSE),
        (streams.OpenFrame(2, "db.internal", 22), OPERATOR, Verdict.REFUSE),
    ],
)
def test_the_rule_table(frame: streams.Frame, from_node: bool, verdict: Verdict) -> None:
    assert ledger_with_stream_1().inspect(frame, from_node, 11.0).verdict is verdict


def test_a_connection_closes_once_both_sides_sent_eof_and_keeps_its_metadata() -> None:
    ledger = ledger_with_stream_1()
    ledger.inspect(streams.DataFrame(1, 0, b"request"), OPERATOR, 11.0)
    ledger.inspect(streams.EofFrame(1, 7), OPERATOR, 11.5)
    ledger.inspect(streams.DataFrame(1, 0, b"a longer reply"), NODE, 12.0)
    assert ledger.inspect(streams.DataFrame(1, 7, b"more"), OPERATOR, 12.0).verdict is (
        Verdict.VIOLATION  # data after the operator's own EOF
    )
    done = ledger.inspect(streams.EofFrame(1, 14), NODE, 13.0)
    assert done.verdict is Verdict.FORWARD
    closed = done.closed
    assert closed is not None
    assert (closed.host, closed.port, closed.outcome) == ("localhost", 22, "closed")
    assert (closed.bytes_in, closed.bytes_out) == (7, 14)
    assert (closed.opened_at, closed.closed_at) == (10.0, 13.0)
    assert (ledger.connections, ledger.bytes_in, ledger.bytes_out) == (1, 7, 14)
    assert ledger.open_connections == []
    # Late frames still pass (a resume may send them again), and are not counted.
    assert ledger.inspect(streams.AckFrame(1, 14), OPERATOR, 13.1).verdict is Verdict.FORWARD
    assert ledger.inspect(streams.DataFrame(1, 14, b"x"), NODE, 13.1).verdict is Verdict.FORWARD
    assert ledger.bytes_out == 14


def test_failures_close_the_connection_and_late_frames_are_dropped() -> None:
    ledger = ledger_with_stream_1()
    failed = ledger.inspect(streams.OpenFailedFrame(1, "connection refused"), NODE, 10.2).closed
    assert failed is not None
    assert (failed.outcome, failed.reason) == ("failed", "connection refused")
    # The operator's data sent right after OPEN is still in flight: passed on, not counted.
    assert ledger.inspect(streams.DataFrame(1, 0, b"x"), OPERATOR, 10.3).verdict is Verdict.FORWARD
    assert ledger.inspect(streams.EofFrame(1, 1), OPERATOR, 10.3).verdict is Verdict.FORWARD
    assert ledger.bytes_in == 0
    # The OPEN sent again after a resume is answered with why it ended.
    again = ledger.inspect(OPEN, OPERATOR, 10.4)
    assert (again.verdict, again.reason, again.closed) == (
        Verdict.REFUSE,
        "connection refused",
        None,
    )
    ledger.inspect(streams.OpenFrame(2, "localhost", 22), OPERATOR, 11.0)
    aborted = ledger.inspect(streams.OpenFailedFrame(2, "reset"), OPERATOR, 11.0).closed
    assert aborted is not None
    assert aborted.outcome == "aborted"


def test_refusals_say_why_and_count_as_closed() -> None:
    ledger = ledger_with_stream_1()
    wrong = ledger.inspect(streams.OpenFrame(2, "localhost", 5432), OPERATOR, 11.0)
    assert wrong.reason == "this session may only open localhost:22"
    assert wrong.closed is not None
    assert wrong.closed.outcome == "refused"
    assert ledger.inspect(streams.DataFrame(2, 0, b"x"), OPERATOR, 11.0).verdict is (
        Verdict.FORWARD  # the node never had it, and ignores it
    )
    again = ledger.inspect(streams.OpenFrame(2, "localhost", 5432), OPERATOR, 11.0)
    assert (again.verdict, again.reason) == (Verdict.REFUSE, wrong.reason)
    assert ledger.inspect(streams.OpenFrame(3, "localhost", 22), OPERATOR, 11.0).verdict is (
        Verdict.FORWARD
    )
    full = ledger.inspect(streams.OpenFrame(4, "localhost", 22), OPERATOR, 11.0)
    assert full.verdict is Verdict.REFUSE
    assert full.reason == "too many connections: at most 2 at once in a session"
    assert ledger.connections == 2


def test_the_end_of_the_session_closes_what_is_still_open() -> None:
    ledger = ledger_with_stream_1()
    ledger.inspect(streams.OpenFrame(2, "localhost", 22), OPERATOR, 11.0)
    ledger.inspect(streams.EofFrame(2, 0), OPERATOR, 11.0)
    ledger.inspect(streams.EofFrame(2, 0), NODE, 11.0)
    [left] = ledger.close_all(20.0, "the session ended")
    assert (left.stream, left.outcome, left.closed_at) == (1, "ended", 20.0)
    assert ledger.close_all(21.0, "again") == []


def test_bytes_sent_again_after_a_resume_are_counted_once() -> None:
    ledger = ledger_with_stream_1()
    for frame in (
        streams.DataFrame(1, 0, b"hello"),
        streams.DataFrame(1, 0, b"hello world"),  # resent from 0, with 6 new bytes
        streams.DataFrame(1, 3, b"lo world"),  # entirely seen
        streams.EofFrame(1, 11),
        streams.DataFrame(1, 5, b" world"),  # resent after EOF: no new bytes, fine
        streams.EofFrame(1, 11),
    ):
        assert ledger.inspect(frame, NODE, 11.0).verdict is Verdict.FORWARD
    assert ledger.bytes_out == 11
    assert ledger.inspect(streams.DataFrame(1, 5, b" world!"), NODE, 11.0).verdict is (
        Verdict.VIOLATION  # a new byte after EOF
    )
