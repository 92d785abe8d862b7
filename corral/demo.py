"""`make demo`: an embedded server, three local agents and a real fan-out, in one command.

Everything runs from a temporary directory on loopback: the server (SQLite, local
blobs, in-process bus) and three `corral agent run` processes, each registered with
its own key. The demo runs a command on all of them, shows the result, prints how
to try more, and waits for Ctrl-C; then it stops every process and removes the
directory. `--once` stops right after the fan-out (used by the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

AGENTS = (("web", "demo-web-1"), ("web", "demo-web-2"), ("db", "demo-db-1"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    """The processes of one demo run and how to stop them."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.env["CORRAL_CONFIG"] = str(root / "cli-config.toml")

    def corral(self, *args: str, capture: bool = True) -> str:
        """Run the corral CLI against the demo server; stop the demo if it fails."""
        done = subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
            [sys.executable, "-m", "corral", *args],
            env=self.env,
            capture_output=capture,
            text=True,
            check=False,
        )
        if done.returncode not in (0, 1):
            sys.stderr.write(done.stderr or "")
            raise SystemExit(f"demo: `corral {' '.join(args)}` failed ({done.returncode})")
        return done.stdout or ""

    def spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        """Start a long-running corral process with its output in a log file."""
        with (self.root / log).open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
                [sys.executable, "-m", "corral", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def start_server(self) -> None:
        """Start the embedded server and wait for /healthz."""
        data = self.root / "server"
        self.spawn(
            ["server", "--data-dir", str(data), "--listen", f"127.0.0.1:{self.port}"], "server.log"
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):  # noqa: S310
                    break
            except OSError:
                if time.monotonic() > deadline or self.processes[0].poll() is not None:
                    log = (self.root / "server.log").read_text(errors="replace")
                    raise SystemExit(f"demo: the server did not start:\n{log}") from None
                time.sleep(0.1)
        token = (data / "admin-token").read_text().strip()
        self.env.update(CORRAL_SERVER=self.url, CORRAL_TOKEN=token)

    def start_agents(self) -> list[str]:
        """Register and start the demo agents; returns their node ids."""
        activation = json.loads(
            self.corral(
                "activation",
                "create",
                "--limit",
                str(len(AGENTS)),
                "--tag",
                "env=demo",
                "--description",
                "make demo",
                "-o",
                "json",
            )
        )
        node_ids = []
        for role, name in AGENTS:
            state = self.root / name
            registered = json.loads(
                self.corral(
                    "agent",
                    "register",
                    "--server",
                    self.url,
                    "--activation-id",
                    activation["activation_id"],
                    "--activation-code",
                    activation["activation_code"],
                    "--state-dir",
                    str(state),
                    "--tag",
                    f"role={role}",
                    "--tag",
                    f"name={name}",
                    "-o",
                    "json",
                )
            )
            node_ids.append(registered["node_id"])
            self.spawn(["agent", "run", "--state-dir", str(state)], f"{name}.log")
        deadline = time.monotonic() + 30
        while True:
            nodes = json.loads(self.corral("nodes", "list", "-o", "json"))
            if sum(n["ping_status"] == "Online" for n in nodes) == len(AGENTS):
                return node_ids
            if time.monotonic() > deadline:
                raise SystemExit("demo: the agents did not come online; see " + str(self.root))
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop agents first, then the server; kill anything that lingers."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop after the fan-out")
    parser.add_argument("--keep", action="store_true", help="keep the demo directory")
    options = parser.parse_args(argv)
    # Ctrl-C and SIGTERM both end the demo at any point, even when it was started with
    # SIGINT ignored (as background jobs of a non-interactive shell are).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="corral-demo-"))
    demo = Demo(root, _free_port())
    out = sys.stdout
    try:
        out.write(f"Starting a Corral server on {demo.url} (data in {root}/server) ...\n")
        demo.start_server()
        out.write("Registering and starting 3 agents (tags env=demo, role=web|db) ...\n")
        demo.start_agents()
        out.write(demo.corral("nodes", "list"))
        out.write("\nRunning a command on every node with tag env=demo:\n")
        out.write("  corral run Corral-RunShellScript --targets tag:env=demo \\\n")
        out.write("    --param commands='echo \"hello from $(hostname)\"; uname -sr; id -un'\n\n")
        out.flush()
        demo.corral(
            "run", "Corral-RunShellScript", "--targets", "tag:env=demo",
            "--param", 'commands=echo "hello from $(hostname)"; uname -sr; id -un',
            capture=False,
        )  # fmt: skip
        if options.once:
            return 0
        out.write(
            "\nTry more in another terminal:\n"
            f"  export CORRAL_SERVER={demo.url} CORRAL_TOKEN={demo.env['CORRAL_TOKEN']}\n"
            "  .venv/bin/corral nodes list\n"
            "  .venv/bin/corral run Corral-RunShellScript --targets tag:role=web "
            "--param commands='df -h /' \n"
            "  .venv/bin/corral commands list\n"
            "\nPress Ctrl-C to stop the demo and clean up.\n"
        )
        out.flush()
        while True:
            signal.pause()
    except KeyboardInterrupt:
        return 0
    finally:
        demo.stop()
        if options.keep:
            out.write(f"Demo files kept in {root}\n")
        else:
            shutil.rmtree(root, ignore_errors=True)
        out.write("Demo stopped; every process ended.\n")


if __name__ == "__main__":
    sys.exit(main())
