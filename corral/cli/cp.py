"""`corral cp`: copy files and directory trees to and from nodes, checksummed and resumable.

    corral cp LOCAL NODE:PATH [--recursive]     upload
    corral cp NODE:PATH LOCAL [--recursive]     download

Each attempt asks the server for a transfer (`POST /api/v1/transfers/{upload,download}`,
where policy is checked and the call audited), then attaches to it over a WebSocket
with the same token; the node joins from its side and the server relays. The
protocol is corral/protocol/transfer.py; the ends are corral/transfer. A dropped
connection is retried (`--retries`, exponential backoff) with a new transfer, and
the receiver's partial files make it resume where it stopped; so does running the
same command again after it gave up or was interrupted.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import ssl
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from corral.cli import output
from corral.cli.client import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ApiClient,
    CliError,
    Connection,
    ca_file_context,
    resolve_connection,
)
from corral.cli.state import AppState, app_state
from corral.errors import ValidationError
from corral.protocol.transfer import (
    BUSY,
    CONNECTION_LOST,
    DENIED,
    DOWNLOAD,
    FILE,
    INVALID,
    NODE_TIMEOUT,
    NOT_FOUND,
    SYMLINK,
    UNAVAILABLE,
    UPLOAD,
    Side,
    TransferError,
    TransferFlow,
    TransferReady,
    normalize_path,
)
from corral.transfer import (
    Link,
    Summary,
    WebSocketChannel,
    receive_tree,
    resolve_destination,
    resolve_source,
    scan_source,
    send_tree,
)
from corral.transfer.peer import MAX_FRAME, blocking, guarded

_REMOTE = re.compile(r"^(mi-[0-9a-f]{17}):(.*)$", re.DOTALL)
BACKOFF_BASE, BACKOFF_CAP = 0.5, 8.0

# What each failure code means for the exit status (docs/cli.md) and the error type.
_EXITS: dict[str, tuple[int, str]] = {
    DENIED: (EXIT_AUTH, "AccessDeniedError"),
    SYMLINK: (EXIT_AUTH, "AccessDeniedError"),
    NOT_FOUND: (EXIT_NOT_FOUND, "NotFoundError"),
    INVALID: (EXIT_USAGE, "ValidationError"),
    NODE_TIMEOUT: (EXIT_UNAVAILABLE, "UnavailableError"),
    CONNECTION_LOST: (EXIT_UNAVAILABLE, "UnavailableError"),
    BUSY: (EXIT_UNAVAILABLE, "UnavailableError"),
    UNAVAILABLE: (EXIT_UNAVAILABLE, "UnavailableError"),
}


@dataclass(frozen=True, slots=True)
class Plan:
    """What to copy, which way."""

    direction: str
    node_id: str
    remote: str  # as typed: a trailing / means "into this directory"
    local: str
    recursive: bool


def parse_plan(source: str, destination: str, recursive: bool) -> Plan:
    """Which of SOURCE and DESTINATION is the node's (`mi-...:/path`); CliError otherwise."""
    remote_source, remote_destination = _REMOTE.match(source), _REMOTE.match(destination)
    if remote_source and remote_destination:
        raise CliError("copying from one node to another is not supported", field="destination")
    if remote_destination:
        node_id, remote = remote_destination.groups()
        return Plan(UPLOAD, node_id, remote, source, recursive)
    if remote_source:
        node_id, remote = remote_source.groups()
        return Plan(DOWNLOAD, node_id, remote, destination, recursive)
    raise CliError(
        "one of SOURCE and DESTINATION must be a node's path, NODE:PATH"
        " (e.g. mi-0123456789abcdef0:/tmp/file)",
        field="destination",
    )


def _remote_path(path: str, name: str) -> str:
    """The node path to name, a trailing / completed with the source's name."""
    try:
        return normalize_path(path + name if path.endswith("/") else path)
    except ValidationError as error:
        raise CliError(error.message, field="path") from None


def _cli_error(error: TransferError) -> CliError:
    exit_code, type_ = _EXITS.get(error.code, (EXIT_FAILED, "TransferError"))
    return CliError(error.message, type_=type_, exit_code=exit_code)


@dataclass(slots=True)
class Attempt:
    """One transfer attempt's outcome."""

    transfer_id: str = ""
    remote_root: str = ""
    local_root: str = ""
    summary: Summary | None = None


@dataclass(slots=True)
class Meter:
    """Bytes moved by every attempt, with live progress on a terminal's stderr."""

    total: int = 0
    moved: int = 0
    show: bool = False
    _shown_at: float = 0.0
    _started: float = field(default_factory=time.monotonic)

    def __call__(self, count: int) -> None:
        self.moved += count
        if self.show and time.monotonic() - self._shown_at >= 0.2:
            self._shown_at = time.monotonic()
            rate = self.moved / max(time.monotonic() - self._started, 1e-3)
            of = f" / {_size(self.total)}" if self.total else ""
            sys.stderr.write(f"\r{_size(self.moved)}{of}  {_size(int(rate))}/s   ")
            sys.stderr.flush()

    def done(self) -> None:
        """End the progress line."""
        if self.show and self._shown_at:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown_at = 0.0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _ws_url(connection: Connection, transfer_id: str) -> str:
    parts = urllib.parse.urlsplit(connection.server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + f"/api/v1/transfers/{transfer_id}/stream"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


Work = Callable[[Link, TransferReady], Awaitable[Summary]]


async def _attach(
    connection: Connection, transfer_id: str, me: Side, expected: str | None, work: Work
) -> Summary:
    """Attach to a transfer the server created and run this end's work once READY came."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

    extra: dict[str, Any] = {}
    if connection.server.startswith("https"):
        extra["ssl"] = (
            ca_file_context(connection.ca_file)
            if connection.ca_file
            else ssl.create_default_context()
        )
    headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
    node = Side.RECEIVER if me is Side.SENDER else Side.SENDER
    try:
        async with connect(
            _ws_url(connection, transfer_id),
            additional_headers=headers,
            max_size=MAX_FRAME,
            open_timeout=30,
            close_timeout=5,
            **extra,
        ) as ws:
            link = Link(WebSocketChannel(ws), TransferFlow(node, expected), me)
            ready = await guarded(link, link.expect(TransferReady))
            return await work(link, ready)
    except InvalidStatus as error:
        if error.response.status_code in (401, 403):
            raise CliError(
                "the server refused the transfer stream", type_="AuthError", exit_code=EXIT_AUTH
            ) from None
        raise TransferError(
            CONNECTION_LOST, f"the server refused the transfer stream (HTTP {error})"
        ) from None
    except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as error:
        raise TransferError(CONNECTION_LOST, f"transfer connection failed: {error}") from None


def _upload(
    client: ApiClient, connection: Connection, plan: Plan, meter: Meter, attempt: Attempt
) -> None:
    try:
        root, kind = resolve_source(plan.local, plan.recursive)
        tree = scan_source(root, kind)
    except TransferError as error:
        raise _cli_error(error) from None
    meter.total = sum(e.size for e in tree.entries)
    name = os.path.basename(os.path.normpath(os.path.abspath(plan.local)))
    path = _remote_path(plan.remote, name)
    body = {
        "node_id": plan.node_id,
        "path": path,
        "recursive": plan.recursive,
        "source_kind": kind,
        "source_name": name,
    }
    created = client.post("/api/v1/transfers/upload", body)
    attempt.transfer_id, attempt.local_root = str(created["transfer_id"]), root

    async def work(link: Link, ready: TransferReady) -> Summary:
        attempt.remote_root = ready.root
        return await send_tree(link, tree, meter)

    attempt.summary = asyncio.run(_attach(connection, attempt.transfer_id, Side.SENDER, kind, work))


def _download(
    client: ApiClient, connection: Connection, plan: Plan, meter: Meter, attempt: Attempt
) -> None:
    path = _remote_path(plan.remote, "")
    body = {"node_id": plan.node_id, "path": path, "recursive": plan.recursive}
    created = client.post("/api/v1/transfers/download", body)
    attempt.transfer_id = str(created["transfer_id"])
    name = os.path.basename(path)
    local = plan.local + name if plan.local.endswith(os.sep) else plan.local

    async def work(link: Link, ready: TransferReady) -> Summary:
        attempt.remote_root = ready.root
        try:
            target = await blocking(resolve_destination, local, name, ready.kind)
        except TransferError as error:
            await link.fail(error)
            raise
        attempt.local_root = target
        return await receive_tree(link, target, meter)

    attempt.summary = asyncio.run(
        _attach(connection, attempt.transfer_id, Side.RECEIVER, None, work)
    )


def _retryable(error: CliError | TransferError, attempts: int) -> bool:
    if isinstance(error, TransferError):
        return error.retryable
    # 409: the node is not connected: after a drop it may be reconnecting; on the first
    # attempt it is simply offline. 503 or unreachable: the server.
    return (error.http_status == 409 and attempts > 1) or error.exit_code == EXIT_UNAVAILABLE


def _final(error: CliError | TransferError) -> CliError:
    if isinstance(error, TransferError):
        return _cli_error(error)
    if error.http_status == 409:  # the node is not connected
        return CliError(error.message, type_="UnavailableError", exit_code=EXIT_UNAVAILABLE)
    return error


def _copy(state: AppState, plan: Plan, retries: int, meter: Meter) -> tuple[Attempt, int]:
    """Run attempts until one completes or a failure is final; (last attempt, attempts)."""
    connection = resolve_connection(state.server, state.token, state.ca_file)
    attempts = 0
    rand = random.Random()  # noqa: S311 - jitter, not secrets
    while True:
        attempts += 1
        attempt = Attempt()
        try:
            with state.client() as client:
                if plan.direction == UPLOAD:
                    _upload(client, connection, plan, meter, attempt)
                else:
                    _download(client, connection, plan, meter, attempt)
            return attempt, attempts
        except (CliError, TransferError) as error:
            meter.done()
            if not _retryable(error, attempts) or attempts > retries:
                raise _final(error) from None
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempts - 1)) * rand.uniform(0.5, 1)
            output.note(
                f"transfer interrupted: {error.message}; retrying in {delay:.1f} s"
                f" (attempt {attempts + 1} of {retries + 1})"
            )
            time.sleep(delay)


def _result(plan: Plan, attempt: Attempt, attempts: int, meter: Meter) -> dict[str, Any]:
    summary = attempt.summary
    assert summary is not None
    entries = [
        {
            "path": e.path,
            "kind": e.kind,
            "mode": f"{e.mode:04o}",
            "size": e.size,
            "sha256": e.sha256 or None,
            "resumed_from": e.resumed_from,
        }
        for e in summary.entries
    ]
    result: dict[str, Any] = {
        "transfer_id": attempt.transfer_id,
        "direction": plan.direction,
        "node_id": plan.node_id,
        "remote_path": attempt.remote_root,
        "local_path": attempt.local_root,
        "kind": summary.kind,
        "files": summary.files,
        "directories": summary.directories,
        "bytes": summary.bytes,
        "bytes_transferred": meter.moved,
        "bytes_resumed": summary.resumed,
        "attempts": attempts,
        "sha256": summary.entries[0].sha256 if summary.kind == FILE else None,
        "entries": entries,
        "skipped": list(summary.skipped),
        "restarted": [e.path or attempt.remote_root for e in summary.entries if e.restarted],
    }
    return result


def _describe(result: dict[str, Any]) -> str:
    upload = result["direction"] == UPLOAD
    verb, where = ("Uploaded", "to") if upload else ("Downloaded", "from")
    remote = f"{result['node_id']}:{result['remote_path']}"
    local = result["local_path"]
    if result["kind"] == FILE:
        what = f"{local} {where} {remote}" if upload else f"{remote} to {local}"
        text = f"{verb} {what} ({_size(result['bytes'])}, sha256 {result['sha256']})"
    else:
        counts = f"{result['files']} files and {result['directories']} directories"
        target = f"{where} {remote}" if upload else f"from {remote} to {local}"
        text = f"{verb} {counts} ({_size(result['bytes'])}) {target}"
    if result["bytes_resumed"]:
        text += f"; {_size(result['bytes_resumed'])} were already there"
    if result["attempts"] > 1:
        text += f"; {result['attempts']} attempts"
    return text


def cp(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="LOCAL path, or NODE:PATH to download.")],
    destination: Annotated[str, typer.Argument(help="NODE:PATH to upload to, or a LOCAL path.")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Copy a directory and everything in it.")
    ] = False,
    retries: Annotated[
        int,
        typer.Option("--retries", min=0, max=100, help="Attempts after a dropped connection."),
    ] = 5,
) -> None:
    """Copy a file (or a directory with --recursive) to or from a node: LOCAL NODE:PATH or
    NODE:PATH LOCAL. Checksummed end to end; resumes after a dropped connection. A path
    ending in / names a directory to copy into; a file copied to an existing directory
    lands in it; a directory copy is merged into an existing directory of its name. The
    destination's parent directory must exist.
    """
    state = app_state(ctx)
    plan = parse_plan(source, destination, recursive)
    meter = Meter(show=not state.json_output and sys.stderr.isatty())
    attempt, attempts = _copy(state, plan, retries, meter)
    meter.done()
    result = _result(plan, attempt, attempts, meter)
    if state.json_output:
        output.emit_json(result)
        return
    for path in result["restarted"]:
        output.note(f"note: the partial copy of {path} did not match its source; it was sent again")
    if result["skipped"]:
        output.note(
            "skipped (links and special files are not copied): " + ", ".join(result["skipped"])
        )
    output.write_raw(_describe(result) + "\n")
