"""Messages of the agent channel, one frozen dataclass per message type.

Every message is a JSON object with a `type` field naming it. Binary payloads
(`bytes` fields) travel base64-encoded. The codec (`codec.py`) validates every
field against the annotations below, so a handler only ever sees well-typed
messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

PROTOCOL_VERSION = 1

# Limits of `Invoke.mask`, enforced by the codec on decode (see `codec.py`: a field's
# metadata may carry "max_items", "min_chars" and "max_chars").
MAX_MASK_VALUES = 100
MAX_MASK_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every channel message."""

    TYPE: ClassVar[str] = ""


# --- shared pieces -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What an agent reports about its node on every connection."""

    hostname: str
    platform_type: str  # "Linux", "MacOS", "Windows"
    platform_name: str  # e.g. "debian"
    platform_version: str  # e.g. "12"
    kernel: str
    arch: str
    ip_addresses: list[str]
    agent_version: str


@dataclass(frozen=True, slots=True)
class Step:
    """One fully rendered shell step: the agent runs `script` as written."""

    name: str
    script: str
    env: dict[str, str] = field(default_factory=dict)
    working_directory: str | None = None
    timeout_seconds: int | None = None
    # "exit" stops the invocation after this step fails; "continue" runs the next step.
    on_failure: str = "exit"


@dataclass(frozen=True, slots=True)
class StepResult:
    """How one step of an invocation ended."""

    name: str
    status: str
    response_code: int | None


# --- server -> agent ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame on a connection: a fresh nonce the agent must sign."""

    TYPE: ClassVar[str] = "hello"
    nonce: bytes
    protocol_versions: list[int]


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """The server accepted the agent's proof of identity."""

    TYPE: ClassVar[str] = "welcome"
    node_id: str
    protocol_version: int
    heartbeat_seconds: float
    max_message_bytes: int


@dataclass(frozen=True, slots=True)
class Invoke(Message):
    """Run this invocation. May arrive more than once; the agent runs it at most once."""

    TYPE: ClassVar[str] = "invoke"
    command_id: str
    steps: list[Step]
    # Overall execution timeout; when set, it replaces the steps' own timeouts.
    timeout_seconds: int | None = None
    # Secret values (resolved `{{ssm-secure:...}}` references) the agent masks in this
    # invocation's stdout/stderr before any of it leaves the node: every occurrence of a
    # value's UTF-8 bytes becomes as many `*` bytes. Older servers omit it.
    mask: list[str] = field(
        default_factory=list,
        repr=False,  # never in a log line or a traceback
        metadata={"max_items": MAX_MASK_VALUES, "min_chars": 1, "max_chars": MAX_MASK_CHARS},
    )


@dataclass(frozen=True, slots=True)
class Cancel(Message):
    """Stop this invocation: kill its whole process group."""

    TYPE: ClassVar[str] = "cancel"
    command_id: str


@dataclass(frozen=True, slots=True)
class OutputRewind(Message):
    """The server holds `offset` bytes of this stream; send again from there."""

    TYPE: ClassVar[str] = "output_rewind"
    command_id: str
    stream: str
    offset: int


@dataclass(frozen=True, slots=True)
class ResultAck(Message):
    """The server stored the result; the agent may forget the buffered output."""

    TYPE: ClassVar[str] = "result_ack"
    command_id: str


@dataclass(frozen=True, slots=True)
class ErrorMessage(Message):
    """The peer is told why, in safe words, before the connection closes or a frame is dropped."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str


# --- agent -> server ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Auth(Message):
    """The agent's proof of identity: the server's nonce signed with the node key."""

    TYPE: ClassVar[str] = "auth"
    node_id: str
    signature: bytes
    protocol_version: int
    info: NodeInfo
    # The sessions this agent process is running (None: an agent that does not say).
    # A session the server waits for that is not here died with an earlier process.
    sessions: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """The agent is alive; sent every `heartbeat_seconds`."""

    TYPE: ClassVar[str] = "heartbeat"


@dataclass(frozen=True, slots=True)
class Accepted(Message):
    """The agent journaled the invocation (or had already); it is running or done."""

    TYPE: ClassVar[str] = "accepted"
    command_id: str


@dataclass(frozen=True, slots=True)
class Output(Message):
    """A chunk of an invocation's stdout or stderr, starting at byte `offset` of that stream."""

    TYPE: ClassVar[str] = "output"
    command_id: str
    stream: str  # "stdout" | "stderr"
    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Result(Message):
    """How an invocation ended; the byte totals let the server check it holds all output."""

    TYPE: ClassVar[str] = "result"
    command_id: str
    status: str
    status_details: str
    response_code: int | None
    stdout_bytes: int
    stderr_bytes: int
    steps: list[StepResult]
    started_at: float | None = None
    ended_at: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class SessionStart(Message):
    """Open a session: connect to the server's session endpoint for it.

    `kind` "shell" runs a shell on a pty; "port" carries TCP connections, each to
    `host`:`port` (the only target the session was authorised for).
    """

    TYPE: ClassVar[str] = "session_start"
    session_id: str
    kind: str = "shell"
    # The account the shell runs as (None: the agent's configured default).
    user: str | None = None
    # Run this instead of an interactive login shell.
    command: str | None = None
    cols: int = 80
    rows: int = 24
    idle_timeout_seconds: float | None = 1200.0
    max_duration_seconds: float | None = None
    # Port forwards only: the target every OPEN of the session must name.
    host: str | None = None
    port: int | None = None
    # How long the agent keeps reconnecting a dropped session connection (0: never).
    resume_grace_seconds: float = 0.0
    # Shells only: commands the shell runs first, sourced, never echoed or recorded.
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class SessionTerminate(Message):
    """End a session now (the operator or an administrator terminated it)."""

    TYPE: ClassVar[str] = "session_terminate"
    session_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TransferStart(Message):
    """Copy files: open the transfer WebSocket for it (see corral/protocol/transfer.py).

    `direction` "upload" writes to `path` on the node, "download" reads it; `path` is
    absolute and normalised, and was checked against policy by the server.
    """

    TYPE: ClassVar[str] = "transfer_start"
    transfer_id: str
    direction: str
    path: str
    recursive: bool = False
    # Uploads only: "file" or "directory", and the source's name (a destination that
    # is an existing directory receives the source under this name, as with cp).
    source_kind: str = ""
    source_name: str = ""


SERVER_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    Invoke,
    Cancel,
    OutputRewind,
    ResultAck,
    ErrorMessage,
    SessionStart,
    SessionTerminate,
    TransferStart,
)
AGENT_MESSAGES: tuple[type[Message], ...] = (
    Auth,
    Heartbeat,
    Accepted,
    Output,
    Result,
    ErrorMessage,
)
