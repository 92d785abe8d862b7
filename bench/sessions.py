"""Interactive sessions: keystroke round trip, bulk throughput, server memory under `yes`.

    .venv/bin/python bench/sessions.py [--keystrokes 300] [--bulk-mb 50] [--yes-seconds 10] [--json]

A real `corral server` (SQLite) and a real `corral agent run` on this machine; the
operator side is this process, speaking the session stream protocol directly over
the operator WebSocket (what `corral session start` does, without a terminal):

* keystroke round trip: one byte typed into `cat` on the node's pty until its echo
  comes back (operator -> server -> agent -> pty -> agent -> server -> operator);
* bulk throughput of a shell: `head -c N /dev/zero` on the node read as fast as
  possible (MB/s of terminal output received);
* a port forward's throughput: `corral session forward` to a TCP server on the node
  side that sends `--forward-mb` MB, read as fast as possible through the local port;
* the server's RSS while `yes` runs for `--yes-seconds`, sampled every 0.5 s, once
  read as fast as possible and once not read at all (backpressure must hold it flat).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from corral.protocol import streams

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Rig:
    """A server process and one agent process in a temporary directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="corral-bench-sessions-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.node_id = ""

    def start(self) -> None:
        log = (self.root / "server.log").open("wb")
        self.server = subprocess.Popen(
            [PYTHON, "-m", "corral", "server", "--data-dir", str(self.root / "data"),
             "--listen", f"127.0.0.1:{self.port}", "--log-level", "warning"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        self.token = (self.root / "data" / "admin-token").read_text().strip()
        headers = {"Authorization": f"Bearer {self.token}"}
        activation = httpx.post(self.url + "/api/v1/activations", json={}, headers=headers).json()
        env = dict(os.environ, CORRAL_AGENT_SESSION_USER=os.environ.get("USER", "root"))
        subprocess.run(
            [PYTHON, "-m", "corral", "agent", "register", "--server", self.url,
             "--activation-id", activation["activation_id"],
             "--activation-code", activation["activation_code"],
             "--state-dir", str(self.root / "agent")],
            check=True, capture_output=True, env=env,
        )  # fmt: skip
        identity = json.loads((self.root / "agent" / "identity.json").read_text())
        self.node_id = identity["node_id"]
        self.agent = subprocess.Popen(
            [PYTHON, "-m", "corral", "agent", "run", "--state-dir", str(self.root / "agent")],
            stdout=(self.root / "agent.log").open("wb"), stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
        while time.monotonic() < deadline:
            nodes = httpx.get(self.url + "/api/v1/nodes", headers=headers).json()
            if nodes and nodes[0]["ping_status"] == "Online":
                return
            time.sleep(0.1)
        raise SystemExit("the agent did not come online")

    def stop(self) -> None:
        for process in (self.agent, self.server):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    async def session(self, command: str) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers) as client:
            created = await client.post(
                "/api/v1/sessions",
                json={"node_id": self.node_id, "command": command, "cols": 200, "rows": 50},
            )
            created.raise_for_status()
        ws_url = (
            self.url.replace("http", "ws")
            + f"/api/v1/sessions/{created.json()['session_id']}/stream"
        )
        return connect(ws_url, additional_headers=headers, max_size=2**20)


async def keystrokes(rig: Rig, count: int) -> dict[str, float]:
    async with await rig.session("stty -icanon; cat") as ws:
        await asyncio.sleep(1.0)  # the shell starts and runs stty
        times = []
        for i in range(count):  # one byte each: the offset of key i is i
            key = b"abcdefghij"[i % 10 : i % 10 + 1]
            started = time.perf_counter()
            await ws.send(streams.encode(streams.DataFrame(0, i, key)))
            while True:
                frame = streams.decode(await ws.recv())
                if isinstance(frame, streams.DataFrame) and key in frame.payload:
                    break
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return {
            "p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[int(len(times) * 0.99) - 1], 3),
            "count": float(count),
        }


async def read_output(ws: Any, frame: streams.Frame, output: streams.StreamReceiver) -> int:
    """Take one frame of the shell's output and acknowledge it as a client does (the
    agent sends at most a window of output ahead of the acknowledgements)."""
    if isinstance(frame, streams.DataFrame):
        size = len(output.on_data(frame.offset, frame.payload))
    elif isinstance(frame, streams.EofFrame):
        output.on_eof(frame.offset)
        size = 0
    else:
        return 0
    ack = output.ack_due()
    if ack is not None:
        await ws.send(streams.encode(ack))
    return size


async def bulk(rig: Rig, megabytes: int) -> dict[str, float]:
    size = megabytes * 1024 * 1024
    async with await rig.session(f"head -c {size} /dev/zero") as ws:
        received = 0
        started = None
        output = streams.StreamReceiver(1)
        async for raw in ws:
            frame = streams.decode(raw)
            if isinstance(frame, streams.DataFrame):
                started = started or time.perf_counter()
            received += await read_output(ws, frame, output)
            if isinstance(frame, streams.ExitFrame):
                break
        elapsed = time.perf_counter() - (started or time.perf_counter())
        return {"mb": round(received / 1e6, 1), "seconds": round(elapsed, 3),
                "mb_per_s": round(received / 1e6 / elapsed, 1) if elapsed else 0.0}  # fmt: skip


async def forward_throughput(rig: Rig, megabytes: int) -> dict[str, float]:
    """`corral session forward` to a TCP server on the node side that sends N MB."""
    size = megabytes * 1024 * 1024
    block = b"\0" * (1 << 20)

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent = 0
        while sent < size:
            writer.write(block[: min(len(block), size - sent)])
            sent += min(len(block), size - sent)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    remote_port = server.sockets[0].getsockname()[1]
    local_port = free_port()
    env = dict(os.environ, CORRAL_SERVER=rig.url, CORRAL_TOKEN=rig.token)
    forward = subprocess.Popen(
        [PYTHON, "-m", "corral", "session", "forward", rig.node_id,
         "--remote-port", str(remote_port), "--local-port", str(local_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        received = 0
        started = time.perf_counter()
        while True:
            chunk = await reader.read(1 << 20)
            if not chunk:
                break
            received += len(chunk)
        elapsed = time.perf_counter() - started
        writer.close()
    finally:
        forward.send_signal(signal.SIGINT)
        try:
            forward.wait(10)
        except subprocess.TimeoutExpired:
            forward.kill()
        server.close()
    return {"mb": round(received / 1e6, 1), "seconds": round(elapsed, 3),
            "mb_per_s": round(received / 1e6 / elapsed, 1) if elapsed else 0.0}  # fmt: skip


async def yes_memory(rig: Rig, seconds: float, read: bool) -> dict[str, float]:
    assert rig.server is not None
    pid = rig.server.pid
    samples = [rss_mib(pid)]
    async with await rig.session("yes") as ws:
        received = 0

        async def reader() -> None:
            nonlocal received
            output = streams.StreamReceiver(1)
            async for raw in ws:
                received += await read_output(ws, streams.decode(raw), output)

        task = asyncio.create_task(reader()) if read else None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            samples.append(rss_mib(pid))
        if task is not None:
            task.cancel()
    return {
        "rss_start_mib": round(samples[0], 1),
        "rss_max_mib": round(max(samples), 1),
        "rss_end_mib": round(samples[-1], 1),
        "received_mb": round(received / 1e6, 1),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    rig = Rig()
    try:
        rig.start()
        return {
            "keystroke_round_trip": await keystrokes(rig, args.keystrokes),
            "shell_bulk": await bulk(rig, args.bulk_mb),
            "forward": await forward_throughput(rig, args.forward_mb),
            "yes_read": await yes_memory(rig, args.yes_seconds, read=True),
            "yes_unread": await yes_memory(rig, args.yes_seconds, read=False),
        }
    finally:
        rig.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keystrokes", type=int, default=300)
    parser.add_argument("--bulk-mb", type=int, default=50)
    parser.add_argument("--forward-mb", type=int, default=300)
    parser.add_argument("--yes-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    k = report["keystroke_round_trip"]
    print(
        f"keystroke round trip: p50 {k['p50_ms']} ms, p99 {k['p99_ms']} ms ({int(k['count'])} keys)"
    )
    b = report["shell_bulk"]
    print(f"shell bulk output: {b['mb_per_s']} MB/s ({b['mb']} MB in {b['seconds']} s)")
    f = report["forward"]
    print(f"port forward throughput: {f['mb_per_s']} MB/s ({f['mb']} MB in {f['seconds']} s)")
    for name in ("yes_read", "yes_unread"):
        y = report[name]
        print(
            f"server RSS under `yes` ({'read' if name == 'yes_read' else 'not read'}): "
            f"start {y['rss_start_mib']} MiB, max {y['rss_max_mib']} MiB, "
            f"end {y['rss_end_mib']} MiB; {y['received_mb']} MB received"
        )


if __name__ == "__main__":
    main()
