"""File transfer streams (sans-I/O): messages, path rules and the lockstep flow table.

`corral cp` copies a file or a directory tree between an operator and a node. Each
side holds one WebSocket to the server, which relays between them:

    CLI ──WS /api/v1/transfers/{id}/stream──► server ◄──WS /agent/v1/transfers/{id}── agent

One side *sends* (the CLI on upload, the agent on download), the other *receives*.
Control messages are JSON text frames (the dataclasses below, through `codec`); file
contents are binary DATA frames of `corral.protocol.streams`, whose stream is the
entry's index and whose offset is the byte's position in that file. The sender,
the receiver and the server all run the same `TransferFlow` over what they see, so
each of them refuses anything out of order.

Rules:

* **Ready first.** The agent resolves the path on the node (symbolic links
  followed, so the server can check the real path against policy) and sends READY
  with the resolved root and its kind. Nothing else comes before it.
* **Entries in lockstep.** The sender sends ENTRY `index` (0, 1, 2, ...): index 0
  is the root itself (path ""), later ones are paths below it, parents before
  children. A directory is acknowledged with ENTRY_DONE. For a file the receiver
  answers RESUME (how many bytes it already holds and their SHA-256), the sender
  answers BEGIN (where its DATA starts: that offset if its own first bytes hash the
  same, else 0), sends DATA up to the entry's size, then FILE_END with the SHA-256
  of the whole file; the receiver checks it against what it wrote and answers
  ENTRY_DONE. After the last entry the sender sends END and the receiver, once
  directory modes and times are applied, DONE.

      phase      who       message              next
      opening    node      ready                idle
      idle       sender    entry (directory)    directory
      idle       sender    entry (file)         resume
      idle       sender    end                  ending
      directory  receiver  entry_done           idle
      resume     receiver  resume               begin
      begin      sender    begin                data
      data       sender    DATA                 data
      data       sender    file_end             file_end
      file_end   receiver  entry_done           idle
      ending     receiver  done                 done
      (any)      anyone    failed               failed

* **Resume.** A receiver keeps what it received of a file (a partial file next to
  the destination) when a transfer breaks. The next attempt is a new transfer; in
  its RESUME the receiver offers the partial's length and hash, and the sender
  skips those bytes when they match its own, so nothing received is sent twice.
* **Paths.** Node paths are absolute, normalised (`//`, `.` and a trailing `/`
  removed) and never contain `..`; relative entry paths are `/`-separated names,
  never empty, `.` or `..`. Control characters are refused everywhere: a path is
  shown in terminals and written to logs.
* **Errors.** FAILED from anyone ends the transfer; its `code` says what kind of
  failure it was (`FAILURE_CODES`), and `RETRYABLE_CODES` are worth another attempt.
  Anything malformed or out of order raises `ProtocolError` with a precise message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

from corral.errors import CorralError, ProtocolError, ValidationError
from corral.protocol.messages import Message
from corral.protocol.streams import MAX_OFFSET, DataFrame

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_CONTROL_BYTES = 16 * 1024  # the largest control message (a path is at most 4 KiB)
MAX_MESSAGE_CHARS = 1024
MAX_MODE = 0o777  # permission bits only: set-id and sticky bits are never copied
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CODE = re.compile(r"^[a-z_]{1,32}$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

FILE, DIRECTORY = "file", "directory"
UPLOAD, DOWNLOAD = "upload", "download"

# Failure codes, and what a CLI makes of them (see docs/sessions.md, "File transfer").
DENIED = "denied"  # policy refused a path (exit 4)
SYMLINK = "symlink"  # a symbolic link where none may be followed (exit 4)
NOT_FOUND = "not_found"  # the path or its parent directory does not exist (exit 3)
INVALID = "invalid"  # a directory without --recursive, a file over a directory... (exit 2)
CHECKSUM_MISMATCH = "checksum_mismatch"  # what was written is not what was sent (exit 1)
SOURCE_CHANGED = "source_changed"  # the source shrank while being read (exit 1)
IO_ERROR = "io_error"  # the file system refused (permissions, space) (exit 1)
PROTOCOL = "protocol"  # a party broke this protocol (exit 1)
NODE_TIMEOUT = "node_timeout"  # the node never joined (exit 5)
CONNECTION_LOST = "connection_lost"  # a connection dropped: retry, resuming (exit 5)
BUSY = "busy"  # another transfer is writing the same file right now: retry (exit 5)
UNAVAILABLE = "unavailable"  # the server is shutting down: retry (exit 5)
FAILURE_CODES = frozenset(
    {
        DENIED,
        SYMLINK,
        NOT_FOUND,
        INVALID,
        CHECKSUM_MISMATCH,
        SOURCE_CHANGED,
        IO_ERROR,
        PROTOCOL,
        NODE_TIMEOUT,
        CONNECTION_LOST,
        BUSY,
        UNAVAILABLE,
    }
)
RETRYABLE_CODES = frozenset({CONNECTION_LOST, BUSY, UNAVAILABLE})


class TransferError(CorralError):
    """A transfer failed; `code` is one of `FAILURE_CODES`, `message` is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = code in RETRYABLE_CODES


# --- messages -------------------------------------------------------------------

_PATH = {"max_chars": MAX_PATH_BYTES}


@dataclass(frozen=True, slots=True)
class TransferReady(Message):
    """node -> everyone: the resolved root on the node, and whether it is a file or a tree."""

    TYPE: ClassVar[str] = "ready"
    root: str = field(metadata={"min_chars": 1, **_PATH})
    kind: str


@dataclass(frozen=True, slots=True)
class TransferEntry(Message):
    """sender: the next file or directory (`path` "" is the root itself)."""

    TYPE: ClassVar[str] = "entry"
    index: int
    path: str = field(metadata=_PATH)
    kind: str
    mode: int
    mtime_ns: int
    size: int


@dataclass(frozen=True, slots=True)
class TransferResume(Message):
    """receiver: it holds the first `offset` bytes of the file; `sha256` is their hash."""

    TYPE: ClassVar[str] = "resume"
    index: int
    offset: int
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class TransferBegin(Message):
    """sender: DATA for this file starts at `offset` (the offered one, or 0)."""

    TYPE: ClassVar[str] = "begin"
    index: int
    offset: int


@dataclass(frozen=True, slots=True)
class TransferFileEnd(Message):
    """sender: the whole file was sent; `sha256` is the hash of all `size` bytes."""

    TYPE: ClassVar[str] = "file_end"
    index: int
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class TransferEntryDone(Message):
    """receiver: the entry is in place (a file verified: `sha256` is what it wrote)."""

    TYPE: ClassVar[str] = "entry_done"
    index: int
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class TransferEnd(Message):
    """sender: no more entries."""

    TYPE: ClassVar[str] = "end"
    files: int
    directories: int


@dataclass(frozen=True, slots=True)
class TransferDone(Message):
    """receiver: everything is in place, directory modes and times included."""

    TYPE: ClassVar[str] = "done"
    files: int
    directories: int


@dataclass(frozen=True, slots=True)
class TransferFailed(Message):
    """anyone: the transfer stops; `code` is one of FAILURE_CODES."""

    TYPE: ClassVar[str] = "failed"
    code: str
    message: str = field(default="", metadata={"max_chars": MAX_MESSAGE_CHARS})


TRANSFER_MESSAGES: tuple[type[Message], ...] = (
    TransferReady,
    TransferEntry,
    TransferResume,
    TransferBegin,
    TransferFileEnd,
    TransferEntryDone,
    TransferEnd,
    TransferDone,
    TransferFailed,
)


def failed(code: str, message: str) -> TransferFailed:
    """A FAILED message with a message made safe to show (no controls, bounded)."""
    text = _CONTROL.sub(" ", message)[:MAX_MESSAGE_CHARS]
    return TransferFailed(code if code in FAILURE_CODES else PROTOCOL, text)


# --- paths -----------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    if name in ("", ".", ".."):
        raise ValidationError(f"{what} must not contain an empty, '.' or '..' component", "path")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ValidationError(f"{what} has a name longer than {MAX_NAME_BYTES} bytes", "path")


def _check_text(path: str, what: str) -> None:
    if _CONTROL.search(path):
        raise ValidationError(f"{what} contains control characters", "path")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid UTF-8 text", "path") from None
    if size > MAX_PATH_BYTES:
        raise ValidationError(f"{what} is longer than {MAX_PATH_BYTES} bytes", "path")


def normalize_path(path: str) -> str:
    """`path` as an absolute, normalised node path (ValidationError when it cannot be one).

    `//` and `.` components and a trailing `/` are dropped; `..` is refused rather
    than resolved, since on the node `a/link/..` need not be `a`.
    """
    what = f"the path {path[:80]!r}"
    _check_text(path, what)
    if not path.startswith("/"):
        raise ValidationError(f"{what} must be absolute (start with /)", "path")
    names = [name for name in path.split("/") if name not in ("", ".")]
    for name in names:
        _check_name(name, what)
    return "/" + "/".join(names)


def relative_parts(path: str) -> tuple[str, ...]:
    """The names of an entry's relative path ("" is the root); ProtocolError when invalid."""
    if path == "":
        return ()
    try:
        _check_text(path, "an entry path")
        parts = tuple(path.split("/"))
        for name in parts:
            _check_name(name, "an entry path")
    except ValidationError as error:
        raise ProtocolError(error.message, "bad_path") from None
    return parts


def join(root: str, path: str) -> str:
    """The node path of entry `path` below `root`."""
    if not path:
        return root
    return root.rstrip("/") + "/" + path


# --- the flow -----------------------------------------------------------------------


class Side(Enum):
    """Who sent a message."""

    SENDER = "sender"
    RECEIVER = "receiver"


class Phase(Enum):
    """Where a transfer is (the rows of the module's table)."""

    OPENING = "opening"
    IDLE = "idle"
    DIRECTORY = "directory"
    RESUME = "resume"
    BEGIN = "begin"
    DATA = "data"
    FILE_END = "file_end"
    ENDING = "ending"
    DONE = "done"
    FAILED = "failed"


_DATA = "DATA"
# (phase, who, event) -> next phase; "entry:file" and "entry:directory" are two events.
_TABLE: dict[tuple[Phase, Side, str], Phase] = {
    (Phase.IDLE, Side.SENDER, "entry:directory"): Phase.DIRECTORY,
    (Phase.IDLE, Side.SENDER, "entry:file"): Phase.RESUME,
    (Phase.IDLE, Side.SENDER, "end"): Phase.ENDING,
    (Phase.DIRECTORY, Side.RECEIVER, "entry_done"): Phase.IDLE,
    (Phase.RESUME, Side.RECEIVER, "resume"): Phase.BEGIN,
    (Phase.BEGIN, Side.SENDER, "begin"): Phase.DATA,
    (Phase.DATA, Side.SENDER, _DATA): Phase.DATA,
    (Phase.DATA, Side.SENDER, "file_end"): Phase.FILE_END,
    (Phase.FILE_END, Side.RECEIVER, "entry_done"): Phase.IDLE,
    (Phase.ENDING, Side.RECEIVER, "done"): Phase.DONE,
}


def _event(message: Message) -> str:
    if isinstance(message, TransferEntry):
        return f"entry:{message.kind}"
    return message.TYPE


def _bad(message: str) -> ProtocolError:
    return ProtocolError(message, "bad_transfer")


def _sha(value: str, what: str) -> None:
    if not _SHA256.match(value):
        raise _bad(f"{what} must be 64 lowercase hexadecimal characters")


def _size(value: int, what: str) -> None:
    if not 0 <= value <= MAX_OFFSET:
        raise _bad(f"{what} must be 0..{MAX_OFFSET}, got {value}")


class TransferFlow:
    """Checks one transfer's messages against the table and keeps its counters.

    `node` is the side the agent plays (SENDER on download, RECEIVER on upload): READY
    must come from it. After `on_message`/`on_data` the properties describe the entry
    in progress; nothing here does I/O.
    """

    def __init__(self, node: Side, expected_kind: str | None = None) -> None:
        self._node = node
        self._expected_kind = expected_kind
        self.phase = Phase.OPENING
        self.root = ""
        self.kind = ""
        self.entry: TransferEntry | None = None
        self.entries = 0
        self.files = 0
        self.directories = 0
        self.bytes = 0  # sizes of the files completed
        self.position = 0  # the next byte expected of the current file
        self.offered = 0  # what the receiver offered to resume from
        self.begin = 0  # where the sender started
        self.data_bytes = 0  # DATA bytes of the current file in this transfer
        self.file_sha256 = ""
        self.failure: TransferFailed | None = None

    @property
    def finished(self) -> bool:
        """DONE or FAILED: nothing more may come."""
        return self.phase in (Phase.DONE, Phase.FAILED)

    def on_message(self, side: Side, message: Message) -> None:
        """Account for one control message sent by `side` (ProtocolError if out of order)."""
        if self.finished:
            raise _bad(f"{message.TYPE} after the transfer ended ({self.phase.value})")
        if isinstance(message, TransferFailed):
            self.failure = message
            self.phase = Phase.FAILED
            return
        if isinstance(message, TransferReady):
            self._ready(side, message)
            return
        following = _TABLE.get((self.phase, side, _event(message)))
        if following is None:
            raise _bad(
                f"{side.value} sent {message.TYPE} while the transfer is in phase"
                f" {self.phase.value}"
            )
        self._check(message)
        self.phase = following

    def on_data(self, side: Side, frame: DataFrame) -> None:
        """Account for one DATA frame sent by `side`."""
        if self.finished or (self.phase, side, _DATA) not in _TABLE:
            raise _bad(f"{side.value} sent DATA while the transfer is in phase {self.phase.value}")
        assert self.entry is not None
        if frame.stream != self.entry.index:
            raise _bad(f"DATA for entry {frame.stream} while entry {self.entry.index} is open")
        if frame.offset != self.position:
            raise _bad(f"DATA at byte {frame.offset}, expected byte {self.position}")
        if frame.end > self.entry.size:
            raise _bad(f"DATA up to byte {frame.end} of a {self.entry.size}-byte file")
        self.position = frame.end
        self.data_bytes += len(frame.payload)

    def _ready(self, side: Side, message: TransferReady) -> None:
        if self.phase is not Phase.OPENING or side is not self._node:
            raise _bad("ready must come first, and from the node")
        if message.kind not in (FILE, DIRECTORY):
            raise _bad(f"ready kind must be {FILE} or {DIRECTORY}")
        if self._expected_kind is not None and message.kind != self._expected_kind:
            raise _bad(f"ready kind {message.kind}, expected {self._expected_kind}")
        try:
            root = normalize_path(message.root)
        except ValidationError as error:
            raise _bad(f"ready root: {error.message}") from None
        if root != message.root:
            raise _bad("ready root is not in normal form")
        self.root, self.kind = root, message.kind
        self.phase = Phase.IDLE

    def _check(self, message: Message) -> None:
        match message:
            case TransferEntry():
                self._check_entry(message)
            case TransferResume():
                assert self.entry is not None
                self._same_index(message.index)
                _size(message.offset, "resume offset")
                if message.offset > self.entry.size:
                    raise _bad(
                        f"resume from byte {message.offset} of a {self.entry.size}-byte file"
                    )
                if message.offset == 0:
                    if message.sha256:
                        raise _bad("resume from byte 0 carries no hash")
                else:
                    _sha(message.sha256, "resume sha256")
                self.offered = message.offset
            case TransferBegin():
                self._same_index(message.index)
                if message.offset not in (0, self.offered):
                    raise _bad(f"begin at byte {message.offset}: only 0 or {self.offered} may be")
                self.begin = self.position = message.offset
                self.data_bytes = 0
            case TransferFileEnd():
                assert self.entry is not None
                self._same_index(message.index)
                _sha(message.sha256, "file_end sha256")
                if message.size != self.entry.size or self.position != self.entry.size:
                    raise _bad(
                        f"file_end after {self.position} of {self.entry.size} bytes"
                        f" (it says {message.size})"
                    )
                self.file_sha256 = message.sha256
            case TransferEntryDone():
                self._entry_done(message)
            case TransferEnd() | TransferDone():
                if (message.files, message.directories) != (self.files, self.directories):
                    raise _bad(
                        f"{message.TYPE} counts {message.files} files and {message.directories}"
                        f" directories, but {self.files} and {self.directories} were sent"
                    )
            case _:
                raise _bad(f"unexpected {message.TYPE}")

    def _check_entry(self, entry: TransferEntry) -> None:
        if entry.index != self.entries:
            raise _bad(f"entry {entry.index} out of order: expected entry {self.entries}")
        relative_parts(entry.path)
        if (entry.index == 0) != (entry.path == ""):
            raise _bad('entry 0 and only entry 0 is the root (path "")')
        if entry.index == 0 and entry.kind != self.kind:
            raise _bad(f"the root is a {self.kind}, not a {entry.kind}")
        if entry.index > 0 and self.kind != DIRECTORY:
            raise _bad("only a directory has entries below it")
        if not 0 <= entry.mode <= MAX_MODE:
            raise _bad(f"entry mode must be 0..0o{MAX_MODE:o}, got {entry.mode}")
        _size(entry.size, "entry size")
        if entry.kind == DIRECTORY and entry.size != 0:
            raise _bad("a directory entry has size 0")
        if not 0 <= entry.mtime_ns < 2**63:
            raise _bad("entry mtime_ns must be 0..2**63-1")
        self.entry = entry
        self.entries += 1
        self.position = self.offered = self.begin = self.data_bytes = 0
        self.file_sha256 = ""

    def _entry_done(self, message: TransferEntryDone) -> None:
        assert self.entry is not None
        self._same_index(message.index)
        if self.entry.kind == DIRECTORY:
            if message.sha256:
                raise _bad("entry_done of a directory carries no hash")
            self.directories += 1
            return
        if message.sha256 != self.file_sha256:
            raise _bad("entry_done hash differs from the sender's: that is a failed entry")
        self.files += 1
        self.bytes += self.entry.size

    def _same_index(self, index: int) -> None:
        assert self.entry is not None
        if index != self.entry.index:
            raise _bad(f"message for entry {index} while entry {self.entry.index} is open")
