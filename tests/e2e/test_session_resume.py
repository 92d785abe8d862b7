"""Sessions survive a dropped connection, operator <-> server or server <-> node, without
losing or repeating a byte: a shell (real pty) and a port forward carrying several TCP
connections, with a real server, agent and CLI, and TCP relays the test controls
standing in for the network (cut mid-flow, refused for a while, restored)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import PYTHON, Fleet, wait_for
from tests.e2e.relay import DOWN, UP, Relay
from tests.e2e.test_sessions import Terminal, cli_env, sessions_server

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="sessions as another account need the agent to run as root"
)

GRACE_SECONDS = 6
LINES = 100_000
MEGABYTE = 1024 * 1024
REPLY = 3 * MEGABYTE
_NOTE = re.compile(rb"\r\n\[corral: [^\]\r\n]*\]\r\n")
_LINE = re.compile(rb"L(\d+)$")


@pytest.fixture
def resume_fleet(tmp_path: Path) -> Iterator[tuple[Fleet, Relay]]:
    """A server with a short grace period, and one agent that reaches it through a relay."""
    with sessions_server(tmp_path, "--session-resume-grace", f"{GRACE_SECONDS}s") as fleet:
        relay = Relay(fleet.server.port)
        try:
            [agent] = fleet.add_agents(1, tags=["env=dev"], start=False)
            identity_file = agent.state_dir / "identity.json"
            identity = json.loads(identity_file.read_text())
            identity["server_url"] = relay.url
            identity_file.write_text(json.dumps(identity))
            agent.start()
            fleet.wait_online([agent.node_id])
            yield fleet, relay
        finally:
            relay.close()


def _start(fleet: Fleet, server_url: str) -> Terminal:
    env = cli_env(fleet)
    env["CORRAL_SERVER"] = server_url
    term = Terminal([PYTHON, "-m", "corral", "session", "start", fleet.agents[0].node_id], env)
    term.send("echo rea''dy\r")
    term.expect("ready")
    return term


def _numbered_lines(raw: bytes) -> list[int]:
    """The L<n> lines of a terminal's output, the CLI's own notes taken out."""
    lines = _NOTE.sub(b"", raw).split(b"\r\n")
    # A line's text is what follows its last carriage return (the shell may redraw).
    found = (_LINE.match(line.rsplit(b"\r", 1)[-1]) for line in lines)
    return [int(match.group(1)) for match in found if match]


@pytest.mark.parametrize("hops", ["operator", "node", "both"])
def test_a_shell_survives_a_dropped_connection_without_losing_a_byte(
    resume_fleet: tuple[Fleet, Relay], hops: str
) -> None:
    fleet, node_relay = resume_fleet
    operator_relay = Relay(fleet.server.port)
    # The network goes down in the middle of a flood of output: on the operator's
    # side once 200 kB reached the CLI, on the node's once 200 kB left the agent.
    if hops == "node":
        node_relay.outage_after(UP, 200_000)
        relays = [node_relay]
    else:
        operator_relay.outage_after(DOWN, 200_000)
        relays = [operator_relay, node_relay] if hops == "both" else [operator_relay]
    term = _start(fleet, operator_relay.url)
    try:
        # Typing echo is off, so what is typed during the outage does not land
        # between the numbered lines (the shell prints it when it runs it).
        term.send(f"stty -echo; seq -f L%g 1 {LINES}; echo DO''NE\r")
        term.expect(r"L20000\r\n", timeout=30)
        wait_for(lambda: relays[0].cuts > 0, timeout=15)
        for relay in relays:
            relay.outage()
        term.send("echo typed-$((6*7)) during the outage\r")  # runs after seq
        time.sleep(1.5)
        for relay in relays:
            relay.restore()
        term.expect("DONE", timeout=60)
        term.expect("typed-42 during the outage")
        term.send("exit 5\r")
        assert term.wait(timeout=30) == 5
    finally:
        term.close()
        operator_relay.close()
    everything = term.transcript
    numbers = _numbered_lines(everything)
    assert numbers == list(range(1, LINES + 1)), "output lost or repeated across the drop"
    assert everything.count(b"typed-42 during the outage") == 1
    if hops != "node":
        assert b"[corral: connection lost; reconnecting" in everything
        assert b"[corral: reconnected]" in everything
    server = fleet.server
    [session] = server.cli_json("session", "list")
    resumes = server.cli_json("audit", "list", "--action", "session:Resume")
    sides = {r["details"]["side"] for r in resumes}
    assert sides == ({"operator", "node"} if hops == "both" else {hops})
    for record in resumes:
        assert record["resources"][0] == f"session:{session['session_id']}"
        assert record["source"] == "127.0.0.1"
        owner = "user:admin" if record["details"]["side"] == "operator" else "node:"
        assert record["principal"].startswith(owner)
    assert (session["status"], session["exit_code"]) == ("Terminated", 5)
    cast = (server.data_dir / "blobs" / "recordings" / f"{session['session_id']}.cast").read_text()
    output = "".join(
        event[2] for event in map(json.loads, cast.splitlines()[1:]) if event[1] == "o"
    ).encode()
    assert _numbered_lines(output) == list(range(1, LINES + 1)), "the recording repeats bytes"
    assert session["bytes_out"] == len(output)


@pytest.mark.parametrize("side", ["operator", "node"])
def test_a_session_ends_when_its_connection_stays_down_past_the_grace_period(
    resume_fleet: tuple[Fleet, Relay], side: str
) -> None:
    fleet, node_relay = resume_fleet
    operator_relay = Relay(fleet.server.port)
    term = _start(fleet, operator_relay.url)
    started = time.monotonic()
    try:
        (operator_relay if side == "operator" else node_relay).outage()
        code = term.wait(timeout=GRACE_SECONDS + 20)
    finally:
        term.close()
        operator_relay.close()
        node_relay.restore()
    took = time.monotonic() - started
    assert GRACE_SECONDS - 1 <= took <= GRACE_SECONDS + 15
    [session] = fleet.server.cli_json("session", "list")
    if side == "operator":
        assert code == 5  # EXIT_UNAVAILABLE: the CLI could not get back
        assert b"not restored within 6 s" in term.transcript
        assert session["status"] == "Terminated"
    else:
        assert code == 1
        assert b"[session ended: the node's connection was lost and not restored" in (
            term.transcript
        )
        assert session["status"] == "Failed"
    who = "operator" if side == "operator" else "node"
    assert session["reason"] == f"the {who}'s connection was lost and not restored within 6 s"


class DigestServer:
    """A TCP server on the node's side: reads a connection to its end, then answers with
    the size and SHA-256 of what it read and `REPLY` bytes of its own."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        with conn:
            digest, size = hashlib.sha256(), 0
            while chunk := conn.recv(65536):
                digest.update(chunk)
                size += len(chunk)
            conn.sendall(f"{size} {digest.hexdigest()}\n".encode() + reply_for(size))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self.listener.close()


def reply_for(size: int) -> bytes:
    return random.Random(size).randbytes(REPLY)


def exchange(port: int, payload: bytes, sock: socket.socket | None = None) -> None:
    """Send `payload` through the forward, half-close, check the node's whole answer."""
    sock = sock or socket.create_connection(("127.0.0.1", port), timeout=60)
    with sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    line, _, rest = answer.partition(b"\n")
    assert line.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}"
    assert rest == reply_for(len(payload))


@pytest.mark.parametrize("hops", ["operator", "node", "both"])
def test_a_port_forward_and_its_connections_survive_a_dropped_connection(
    resume_fleet: tuple[Fleet, Relay], hops: str
) -> None:
    fleet, node_relay = resume_fleet
    operator_relay = Relay(fleet.server.port)
    target = DigestServer()
    if hops == "node":
        node_relay.outage_after(UP, MEGABYTE)
        relays = [node_relay]
    else:
        operator_relay.outage_after(DOWN, MEGABYTE)
        relays = [operator_relay, node_relay] if hops == "both" else [operator_relay]
    env = cli_env(fleet)
    env["CORRAL_SERVER"] = operator_relay.url
    errors = fleet.root / f"forward-{hops}.err"
    with errors.open("wb") as stderr:
        forward = subprocess.Popen(
            [
                PYTHON, "-m", "corral", "session", "forward", fleet.agents[0].node_id,
                "--remote-port", str(target.port), "-o", "json",
            ],
            stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    idle: socket.socket | None = None
    try:
        assert forward.stdout is not None
        text = ""
        while not text.endswith("}\n"):
            line = forward.stdout.readline().decode()
            assert line, errors.read_text()
            text += line
        info = json.loads(text)
        port = int(info["local_port"])
        idle = socket.create_connection(("127.0.0.1", port), timeout=60)  # quiet throughout
        payloads = [random.Random(n).randbytes(2 * MEGABYTE + n) for n in range(4)]
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            running = [pool.submit(exchange, port, payload) for payload in payloads]
            wait_for(lambda: relays[0].cuts > 0, timeout=30)
            for relay in relays:
                relay.outage()
            during = b"opened during the outage" * 1000
            running.append(pool.submit(exchange, port, during))
            time.sleep(1.5)
            for relay in relays:
                relay.restore()
            for done in running:
                done.result(timeout=60)
        exchange(port, b"after the outage", idle)
        exchange(port, b"a new connection")
        forward.send_signal(signal.SIGINT)
        assert forward.wait(15) == 0, errors.read_text()
    finally:
        if forward.poll() is None:
            forward.kill()
            forward.wait(5)
        if forward.stdout is not None:
            forward.stdout.close()
        if idle is not None:
            idle.close()
        operator_relay.close()
        target.close()
    if hops != "node":
        assert "reconnected; every connection carries on" in errors.read_text()
    session = fleet.server.cli_json("session", "show", info["session_id"])
    assert (session["status"], session["connections"]) == ("Terminated", 7)
    sent = sum(map(len, payloads)) + len(b"after the outage") + len(b"a new connection")
    sent += len(b"opened during the outage" * 1000)
    assert session["bytes_in"] == sent  # counted once, resent bytes or not


def test_a_session_whose_agent_restarted_ends_at_once(resume_fleet: tuple[Fleet, Relay]) -> None:
    """The shell died with the agent process: the restarted agent says which sessions it
    runs, and the server ends this one then, not at the end of the grace period."""
    fleet, _node_relay = resume_fleet
    agent = fleet.agents[0]
    term = _start(fleet, fleet.server.url)
    try:
        agent.stop(signal.SIGKILL)
        started = time.monotonic()
        agent.start()
        code = term.wait(timeout=GRACE_SECONDS + 20)
        took = time.monotonic() - started
    finally:
        term.close()
    reason = "the node's agent restarted; the session ended with it"
    assert code == 1
    assert f"[session ended: {reason}]".encode() in term.transcript
    [session] = fleet.server.cli_json("session", "list")
    assert (session["status"], session["reason"]) == ("Failed", reason)
    assert took < GRACE_SECONDS, "it waited for the grace period"
