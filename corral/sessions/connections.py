"""What the server keeps of a port session: its connections' metadata, never their bytes.

The relay shows every frame of a port session (`corral session forward`, `session
proxy`) to a `ConnectionLedger` before forwarding it. The ledger polices the frames
and keeps, per connection, the target, the bytes each way and when it opened and
closed: the server writes one audit event per closed connection and the totals into
the session record. The content itself is not kept: it is often encrypted (SSH,
TLS), so a recording would prove nothing, and keeping it would copy every secret
that crosses the forward.

Rules, in the order `inspect` applies them (operator = the CLI, node = the agent;
a stream is *new* when its id is above every id opened so far, *closed* when it was
opened and has ended, *unknown* when it is above every id opened so far)::

    frame                   from      stream   verdict
    RESIZE, RESUME, EXIT    either    -        VIOLATION (the relay's, before this)
    OPEN                    node      -        VIOLATION
    OPEN                    operator  open     FORWARD if the same target (sent again
                                               after a resume; the node answers it)
    OPEN                    operator  closed   REFUSE (sent again after a resume: the
                                               connection ended, its OPEN_FAILED was lost)
    OPEN                    operator  new      REFUSE if not the session's target or if
                                               MAX_STREAMS are open, else FORWARD (open)
    DATA, EOF, ACK,         either    unknown  VIOLATION
      OPEN_FAILED
    ACK                     either    any      FORWARD
    DATA, EOF, OPEN_FAILED  either    closed   FORWARD, not counted (in flight after a
                                               failure, or sent again after a resume)
    DATA                    either    open     FORWARD; its new bytes counted (bytes
                                               sent again after a resume are not);
                                               VIOLATION for a gap, or new bytes after
                                               that side's EOF
    EOF                     either    open     FORWARD; closed once both sides sent one
    OPEN_FAILED             either    open     FORWARD; closed ("failed" from the node,
                                               "aborted" from the operator)

A REFUSE is answered by the server with OPEN_FAILED to the operator, and the stream
counts as closed ("refused"). Only open connections are held in memory; closed ones
are remembered as "an id at or below the highest opened" (and the reason of the
last few that did not close cleanly, for an OPEN sent again).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

from corral.protocol import streams
from corral.sessions.tunnel import LOST_REASON, MAX_STREAMS, REMEMBERED_STREAMS


class Verdict(enum.Enum):
    """What the relay does with a frame."""

    FORWARD = "forward"
    DROP = "drop"
    REFUSE = "refuse"  # answer OPEN_FAILED to the operator, forward nothing
    VIOLATION = "violation"  # end the session: the sender broke the protocol


@dataclass(slots=True)
class Connection:
    """One TCP connection of a port session: where to, how much, when, how it ended."""

    stream: int
    host: str
    port: int
    opened_at: float
    bytes_in: int = 0  # operator -> node
    bytes_out: int = 0  # node -> operator
    eof_in: bool = False
    eof_out: bool = False
    # Bytes seen each way, by stream offset: what a resume sends again is seen before.
    seen_in: int = 0
    seen_out: int = 0
    closed_at: float | None = None
    # "open", then "closed" (both sides half-closed), "failed" (the node could not
    # connect, or its side broke), "aborted" (the operator's side broke), "refused"
    # (by the server) or "ended" (the session ended first).
    outcome: str = "open"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one frame, why, and the connection it closed (if it did)."""

    verdict: Verdict
    reason: str = ""
    closed: Connection | None = None


class ConnectionLedger:
    """The connections of one port session, as the relay sees them."""

    def __init__(self, host: str, port: int, max_open: int = MAX_STREAMS) -> None:
        self.host = host
        self.port = port
        self._max_open = max_open
        self._open: dict[int, Connection] = {}
        self._ended: OrderedDict[int, str] = OrderedDict()  # why recent ones did not close
        self._highest = 0  # stream ids are 1, 2, ...: 0 means none yet
        self.connections = 0  # opened (refused ones not included)
        self.bytes_in = 0
        self.bytes_out = 0

    @property
    def open_connections(self) -> list[Connection]:
        """Connections not closed yet."""
        return list(self._open.values())

    def inspect(self, frame: streams.Frame, from_node: bool, now: float) -> Decision:
        """Check and count one frame on its way through the relay."""
        if isinstance(
            frame,
            streams.ResizeFrame | streams.ResumeFrame | streams.ExitFrame | streams.NoticeFrame,
        ):
            return Decision(Verdict.VIOLATION, f"{_name(frame)} in a port session")
        if isinstance(frame, streams.OpenFrame):
            return self._on_open(frame, from_node, now)
        if frame.stream > self._highest or frame.stream == 0:
            return Decision(Verdict.VIOLATION, f"{_name(frame)} on unopened stream {frame.stream}")
        if isinstance(frame, streams.AckFrame):
            return Decision(Verdict.FORWARD)
        connection = self._open.get(frame.stream)
        if connection is None:
            return Decision(Verdict.FORWARD)
        if isinstance(frame, streams.DataFrame):
            seen = connection.seen_out if from_node else connection.seen_in
            if frame.offset > seen:
                return Decision(
                    Verdict.VIOLATION,
                    f"DATA at byte {frame.offset} of stream {frame.stream}, after {seen} bytes",
                )
            size = max(0, frame.end - seen)
            if size == 0:
                return Decision(Verdict.FORWARD)
            if connection.eof_out if from_node else connection.eof_in:
                return Decision(Verdict.VIOLATION, f"DATA after EOF on stream {frame.stream}")
            if from_node:
                connection.seen_out = frame.end
                connection.bytes_out += size
                self.bytes_out += size
            else:
                connection.seen_in = frame.end
                connection.bytes_in += size
                self.bytes_in += size
            return Decision(Verdict.FORWARD)
        if isinstance(frame, streams.EofFrame):
            if from_node:
                connection.eof_out = True
            else:
                connection.eof_in = True
            if connection.eof_in and connection.eof_out:
                return Decision(Verdict.FORWARD, closed=self._close(connection, now, "closed"))
            return Decision(Verdict.FORWARD)
        outcome = "failed" if from_node else "aborted"
        closed = self._close(connection, now, outcome, frame.reason)
        return Decision(Verdict.FORWARD, closed=closed)

    def close_all(self, now: float, reason: str) -> list[Connection]:
        """The session ended: every connection still open is closed as "ended"."""
        return [self._close(c, now, "ended", reason) for c in list(self._open.values())]

    def _on_open(self, frame: streams.OpenFrame, from_node: bool, now: float) -> Decision:
        if from_node:
            return Decision(Verdict.VIOLATION, "OPEN from the node")
        if frame.stream <= self._highest:
            known = self._open.get(frame.stream)
            if known is not None and (known.host, known.port) == (frame.host, frame.port):
                return Decision(Verdict.FORWARD)  # sent again after a resume
            if known is not None:
                return Decision(
                    Verdict.VIOLATION, f"OPEN of stream {frame.stream} to another target"
                )
            reason = self._ended.get(frame.stream, LOST_REASON)
            return Decision(Verdict.REFUSE, reason)
        self._highest = frame.stream
        connection = Connection(frame.stream, frame.host, frame.port, now)
        if (frame.host, frame.port) != (self.host, self.port):
            reason = f"this session may only open {self.host}:{self.port}"
        elif len(self._open) >= self._max_open:
            reason = f"too many connections: at most {self._max_open} at once in a session"
        else:
            self._open[frame.stream] = connection
            self.connections += 1
            return Decision(Verdict.FORWARD)
        connection.closed_at = now
        connection.outcome = "refused"
        connection.reason = reason
        self._remember(frame.stream, reason)
        return Decision(Verdict.REFUSE, reason, connection)

    def _remember(self, stream: int, reason: str) -> None:
        self._ended[stream] = reason
        while len(self._ended) > REMEMBERED_STREAMS:
            self._ended.popitem(last=False)

    def _close(
        self, connection: Connection, now: float, outcome: str, reason: str = ""
    ) -> Connection:
        del self._open[connection.stream]
        connection.closed_at = now
        connection.outcome = outcome
        connection.reason = reason
        if outcome != "closed":
            self._remember(connection.stream, reason or f"the connection {outcome}")
        return connection


def _name(frame: streams.Frame) -> str:
    return type(frame).__name__.removesuffix("Frame").upper().replace("OPENFAILED", "OPEN_FAILED")
