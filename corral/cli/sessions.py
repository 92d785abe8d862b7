"""`corral session ...`: shells and port forwards on nodes, their records and recordings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import sys
import termios
import time
import tty
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer

from corral.cli import forwarding, output
from corral.cli.client import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    CliError,
    Connection,
    ca_file_context,
    resolve_connection,
)
from corral.cli.forwarding import retry_cap
from corral.cli.state import app_state
from corral.errors import ProtocolError
from corral.protocol import streams
from corral.sessions.asciicast import replay as replay_recording
from corral.sessions.link import LOST, Connector, LinkClosed, ShellLink
from corral.sessions.tunnel import DEFAULT_HOST

app = typer.Typer(
    help="Shells and port forwards on nodes, recorded and audited.", no_args_is_help=True
)

INPUT, OUTPUT = 0, 1
_COLUMNS = ["SESSION", "NODE", "OWNER", "USER", "TARGET", "STATUS", "STARTED", "ENDED", "EXIT"]


def _row(s: dict[str, Any]) -> list[str]:
    target = f"{s['target_host']}:{s['target_port']}" if s.get("target_port") else None
    return [
        str(s.get("session_id")),
        str(s.get("node_id")),
        str(s.get("owner")),
        output.text_or_dash(s.get("user")),
        output.text_or_dash(target),
        str(s.get("status")),
        output.format_time(s.get("started_at") or s.get("created_at")),
        output.format_time(s.get("ended_at")),
        output.text_or_dash(s.get("exit_code")),
    ]


@app.command("start")
def start(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node id (mi-...).")],
    user: Annotated[
        str | None, typer.Option("--user", help="Account to run as (policy: osuser:NAME).")
    ] = None,
    command: Annotated[
        str | None, typer.Option("--command", help="Run this instead of a login shell.")
    ] = None,
) -> None:
    """Open an interactive shell on NODE in this terminal; exits with the shell's status."""
    state = app_state(ctx)
    cols, rows = shutil.get_terminal_size((80, 24))
    with state.client() as client:
        session = client.post(
            "/api/v1/sessions",
            {"node_id": node, "user": user, "command": command, "cols": cols, "rows": rows},
        )
    connection = resolve_connection(state.server, state.token, state.ca_file)
    session_id = str(session["session_id"])
    grace = float(session.get("resume_grace_seconds") or 0.0)
    code = asyncio.run(
        _run_stream(
            connection,
            session_id,
            lambda _ws: _terminal(lambda: _connect(connection, session_id), grace),
            connect=False,
        )
    )
    raise typer.Exit(code)


@app.command("forward")
def forward(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node id (mi-...).")],
    remote_port: Annotated[
        int, typer.Option("--remote-port", min=1, max=65535, help="Port to reach from the node.")
    ],
    remote_host: Annotated[
        str, typer.Option("--remote-host", help="Host to reach from the node (default: itself).")
    ] = DEFAULT_HOST,
    local_port: Annotated[
        int, typer.Option("--local-port", min=0, max=65535, help="Local port (0: any free one).")
    ] = 0,
    bind: Annotated[str, typer.Option("--bind", help="Local address to listen on.")] = "127.0.0.1",
) -> None:
    """Forward a local port to REMOTE_HOST:REMOTE_PORT as seen from NODE, until Ctrl-C."""
    state = app_state(ctx)
    listener = forwarding.listen(bind, local_port)
    host, port = listener.getsockname()[:2]
    with listener:
        with state.client() as client:
            session = client.post(
                "/api/v1/sessions",
                {"node_id": node, "kind": "port", "host": remote_host, "port": remote_port},
            )
        target = forwarding.Target(node, str(session["session_id"]), remote_host, remote_port)

        def announce() -> None:
            if not forwarding.is_loopback(bind):
                output.note(f"warning: other machines can use this forward through {bind}")
            output.note(
                f"Forwarding {host}:{port} -> {remote_host}:{remote_port} on {node}"
                f" (session {target.session_id}); Ctrl-C to stop."
            )
            if state.json_output:
                output.emit_json(
                    {
                        "session_id": target.session_id,
                        "node_id": node,
                        "local_host": host,
                        "local_port": port,
                        "remote_host": remote_host,
                        "remote_port": remote_port,
                    }
                )

        connection = resolve_connection(state.server, state.token, state.ca_file)
        grace = float(session.get("resume_grace_seconds") or 0.0)
        code = asyncio.run(
            _run_stream(
                connection,
                target.session_id,
                lambda _ws: forwarding.serve_forward(
                    lambda: _connect(connection, target.session_id),
                    grace,
                    listener,
                    target,
                    announce,
                ),
                connect=False,
            )
        )
    raise typer.Exit(code)


@app.command("proxy")
def proxy(
    ctx: typer.Context,
    node: Annotated[str, typer.Argument(help="Node id (mi-...), `%h` in ssh's ProxyCommand.")],
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port on the node.")] = 22,
) -> None:
    """Pipe stdin/stdout to PORT on NODE: ssh -o ProxyCommand='corral session proxy %h'."""
    state = app_state(ctx)
    with state.client() as client:
        session = client.post(
            "/api/v1/sessions",
            {"node_id": node, "kind": "port", "host": DEFAULT_HOST, "port": port},
        )
    target = forwarding.Target(node, str(session["session_id"]), DEFAULT_HOST, port)
    connection = resolve_connection(state.server, state.token, state.ca_file)
    grace = float(session.get("resume_grace_seconds") or 0.0)
    code = asyncio.run(
        _run_stream(
            connection,
            target.session_id,
            lambda _ws: forwarding.serve_proxy(
                lambda: _connect(connection, target.session_id), grace, target
            ),
            connect=False,
        )
    )
    raise typer.Exit(code)


def _ws_url(connection: Connection, session_id: str, endpoint: str = "stream") -> str:
    parts = urllib.parse.urlsplit(connection.server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + f"/api/v1/sessions/{session_id}/{endpoint}"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def _connect(connection: Connection, session_id: str, endpoint: str = "stream") -> Any:
    """The session's WebSocket, to open with `async with`."""
    from websockets.asyncio.client import connect

    extra: dict[str, Any] = {}
    if connection.server.startswith("https"):
        extra["ssl"] = (
            ca_file_context(connection.ca_file)
            if connection.ca_file
            else ssl.create_default_context()
        )
    headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
    return connect(
        _ws_url(connection, session_id, endpoint),
        additional_headers=headers,
        max_size=2 * streams.DEFAULT_MAX_PAYLOAD,
        open_timeout=30,
        **extra,
    )


async def _run_stream(
    connection: Connection,
    session_id: str,
    serve: Callable[[Any], Awaitable[int]],
    endpoint: str = "stream",
    connect: bool = True,
) -> int:
    """Connect the session's stream and run `serve` on it; returns its exit code.

    With `connect=False`, `serve` opens the connection itself (and gets None): the
    errors of its first connection are reported the same way.
    """
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        if not connect:
            return await serve(None)
        async with _connect(connection, session_id, endpoint) as ws:
            return await serve(ws)
    except InvalidStatus as error:
        status = error.response.status_code
        raise CliError(
            f"the server refused the session stream (HTTP {status}): not allowed, "
            "or the session is not live",
            exit_code=EXIT_AUTH if status in (401, 403) else EXIT_FAILED,
        ) from None
    except (OSError, ConnectionClosed) as error:
        raise CliError(f"session connection failed: {error}", exit_code=EXIT_UNAVAILABLE) from None


async def _terminal(connect: Callable[[], Any], grace: float) -> int:
    """Raw mode in, output out, resizes across; returns the remote exit status.

    The session's streams run through a `Link`: if the connection to the server
    drops, the shell on the node keeps running and the link reconnects for up to
    `grace` seconds, then carries on with no keystroke or output lost or repeated.
    """
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if interactive else None
    pending: asyncio.Queue[bytes] = asyncio.Queue(maxsize=64)
    resizes: set[asyncio.Task[None]] = set()
    out = sys.stdout.fileno()
    ended: dict[str, Any] = {"code": 1}

    reading = True

    def on_input() -> None:
        nonlocal reading
        try:
            data = os.read(stdin, 4096)
        except OSError:
            data = b""
        pending.put_nowait(data)  # this reader runs only while the queue has room
        if not data or pending.full():
            # Closed, or the session is not taking input (reconnecting, or a full
            # window): stop reading until the queue drains; the terminal keeps what
            # is typed meanwhile.
            loop.remove_reader(stdin)
            reading = False

    async def send_input() -> None:
        nonlocal reading
        while True:
            data = await pending.get()
            if not data:
                return  # local stdin closed: leave the shell to end by itself
            await link.write(data)
            if not reading and pending.qsize() < pending.maxsize // 2:
                loop.add_reader(stdin, on_input)
                reading = True

    async def deliver(data: bytes) -> None:
        await _write_all(out, data)

    async def on_control(frame: streams.Frame) -> bool:
        if isinstance(frame, streams.NoticeFrame):
            _note(frame.text)
            return False
        if isinstance(frame, streams.ExitFrame):
            ended["code"] = frame.code if 0 <= frame.code <= 255 else 1
            if frame.reason and not frame.reason.startswith("the shell exited with status"):
                sys.stderr.write(f"\r\n[session ended: {frame.reason}]\r\n")
            return True
        raise ProtocolError(f"unexpected {type(frame).__name__} from the server")

    def on_state(state: str) -> None:
        if state == LOST:
            _note(f"connection lost; reconnecting (the session waits {grace:g} s)")
        else:
            _note("reconnected")

    link = ShellLink(
        Connector(connect, grace, retry_cap(grace), on_state),
        send_stream=INPUT,
        receive_stream=OUTPUT,
        deliver=deliver,
        on_control=on_control,
    )

    def on_resize() -> None:
        cols, rows = shutil.get_terminal_size((80, 24))
        frame = streams.ResizeFrame(max(1, cols), max(1, rows))
        task = loop.create_task(link.send_control(frame))
        resizes.add(task)
        task.add_done_callback(resizes.discard)

    if interactive:
        assert saved is not None
        tty.setraw(stdin, termios.TCSADRAIN)  # TCSAFLUSH would drop typeahead
    loop.add_reader(stdin, on_input)
    with contextlib.suppress(ValueError, RuntimeError):
        loop.add_signal_handler(signal.SIGWINCH, on_resize)
    sender = asyncio.create_task(send_input())
    try:
        await link.run()
    except LinkClosed as error:
        raise CliError(
            f"session connection lost: {error.reason} (corral session show tells how it ended)",
            exit_code=EXIT_UNAVAILABLE,
        ) from None
    except ProtocolError as error:
        raise CliError(f"session failed: {error.message}", exit_code=EXIT_FAILED) from None
    finally:
        sender.cancel()
        with contextlib.suppress(Exception):
            loop.remove_reader(stdin)
        with contextlib.suppress(ValueError, RuntimeError):
            loop.remove_signal_handler(signal.SIGWINCH)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
    return int(ended["code"])


async def _write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`, waiting (not failing) when it is non-blocking and full."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            writable: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, _resolve, writable)
            try:
                await writable
            finally:
                loop.remove_writer(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _note(text: str) -> None:
    """A message beside the session's output (on stderr, on its own line)."""
    sys.stderr.write(f"\r\n[corral: {text}]\r\n")
    sys.stderr.flush()


@app.command("join")
def join(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument()],
    observe: Annotated[
        bool, typer.Option("--observe", help="Watch read-only (the only way to join).")
    ] = False,
) -> None:
    """Watch a live shell session read-only; its owner is told you are watching.

    Needs `session:Observe` on the session. Ends when the session ends (or Ctrl-C).
    """
    if not observe:
        raise CliError(
            "only --observe is supported: a session's terminal belongs to its owner",
            field="observe",
        )
    state = app_state(ctx)
    connection = resolve_connection(state.server, state.token, state.ca_file)
    try:
        code = asyncio.run(_run_stream(connection, session_id, _observe, endpoint="observe"))
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


async def _observe(ws: Any) -> int:
    out = sys.stdout.buffer
    async for raw in ws:
        if not isinstance(raw, bytes):
            continue
        frame = streams.decode(raw)
        if isinstance(frame, streams.DataFrame):
            out.write(frame.payload)
            out.flush()
        elif isinstance(frame, streams.ExitFrame):
            sys.stderr.write(f"\r\n[session ended: {frame.reason}]\r\n")
            return 0
    return 0


@app.command("list")
def list_sessions(
    ctx: typer.Context,
    active: Annotated[bool, typer.Option("--active", help="Only sessions still open.")] = False,
    node: Annotated[str | None, typer.Option("--node", help="Only this node's.")] = None,
) -> None:
    """Sessions, newest first."""
    state = app_state(ctx)
    params: dict[str, str] = {"active": str(active).lower()}
    if node:
        params["node_id"] = node
    with state.client() as client:
        found = client.get("/api/v1/sessions", params=params)
    if state.json_output:
        output.emit_json(found)
        return
    output.print_table(_COLUMNS, [_row(s) for s in found])


@app.command("show")
def show(ctx: typer.Context, session_id: Annotated[str, typer.Argument()]) -> None:
    """One session: who, where, as whom, how it ended, bytes each way, its recording."""
    state = app_state(ctx)
    with state.client() as client:
        found = client.get(f"/api/v1/sessions/{session_id}")
    if state.json_output:
        output.emit_json(found)
        return
    output.print_table(_COLUMNS, [_row(found)])
    if found.get("reason"):
        output.note(f"Reason: {found['reason']}")
    if found.get("kind") == "port":
        output.note(
            f"Connections: {found.get('connections')}; bytes in {found.get('bytes_in')},"
            f" out {found.get('bytes_out')} (per connection: corral audit list"
            " --action session:Connection)"
        )


@app.command("terminate")
def terminate(ctx: typer.Context, session_id: Annotated[str, typer.Argument()]) -> None:
    """End a session now."""
    state = app_state(ctx)
    with state.client() as client:
        found = client.post(f"/api/v1/sessions/{session_id}/terminate")
    if state.json_output:
        output.emit_json(found)
        return
    output.note(f"Session {session_id}: {found.get('status')} ({found.get('reason')})")


@app.command("replay")
def replay(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument()],
    speed: Annotated[float, typer.Option("--speed", min=0.01, help="Playback speed.")] = 1.0,
    idle_limit: Annotated[
        float | None, typer.Option("--idle-limit", help="Longest pause shown, in seconds.")
    ] = 2.0,
) -> None:
    """Play a session's recording in this terminal (asciicast v2; `asciinema play` works too)."""
    state = app_state(ctx)
    with state.client() as client:
        response = client.request("GET", f"/api/v1/sessions/{session_id}/recording", raw=True)
    text = response.content.decode("utf-8", "replace")

    def write(chunk: str) -> None:
        sys.stdout.write(chunk)
        sys.stdout.flush()

    replay_recording(text, write, time.sleep, speed=speed, idle_time_limit=idle_limit)
