"""Run Command fan-out benchmark: prints every figure issue #2 asks for, from one run.

    .venv/bin/python bench/fanout.py [--swarm 1000] [--real 50] [--idle-seconds 10] [--json]

1. floor: N `echo` processes spawned directly from asyncio, concurrency 50;
2. a real `corral server` (SQLite) and a swarm of N full agents in ONE process
   (each its own identity, connection and journal): time from the API accepting
   a `Corral-RunShellScript` `echo` command to the last result stored, with p50/p95
   per-invocation latency (dispatched -> result stored);
3. the same with M real `corral agent run` processes;
4. the server's peak RSS; one idle real agent's RSS and CPU, beside a bare
   `python -c 'import asyncio, ssl'`;
5. what a worker's spawn costs from a process holding as many descriptors as the
   swarm does, beside one holding as many as a real agent does: the part of the
   swarm's worker CPU that hosting N agents in one process adds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from corral.agent.identity import save_identity

PYTHON = sys.executable
ECHO = shutil.which("echo") or "/bin/echo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def proc_status(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system) of a process, or of its reaped descendants."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def floor(count: int, concurrency: int = 50) -> float:
    """Seconds to spawn `count` echo processes from asyncio, `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                ECHO, "hi", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            await proc.communicate()

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return time.perf_counter() - start


SPAWN_PROBE = """
import os, resource, socket, sys
fds, count, bash = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
while len(os.listdir("/proc/self/fd")) < fds:
    held.extend(socket.socketpair())
def cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
argv = [bash, "--noprofile", "--norc", "-c", ":"]
before = cpu()
for _ in range(count):
    pid = os.posix_spawn(bash, argv, dict(os.environ), setsid=True)
    os.waitpid(pid, 0)
print((cpu() - before) / count)
"""


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def spawn_cpu(descriptors: int, count: int = 300) -> float:
    """CPU seconds per posix_spawn of `bash -c :` (the worker's own exec) and its run,
    from a process holding `descriptors` open descriptors (sockets, close-on-exec)."""
    bash = shutil.which("bash") or "/bin/bash"
    out = subprocess.run(
        [PYTHON, "-c", SPAWN_PROBE, str(descriptors), str(count), bash],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout)


class Bench:
    """A server process plus the agents under test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.token = ""

    def start_server(self) -> None:
        data = self.root / "server"
        with (self.root / "server.log").open("ab") as log:
            self.server = subprocess.Popen(
                [PYTHON, "-m", "corral", "server", "--data-dir", str(data),
                 "--listen", f"127.0.0.1:{self.port}", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )  # fmt: skip
        self.processes.append(self.server)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start; see " + str(self.root / "server.log"))
            time.sleep(0.1)
        self.token = (data / "admin-token").read_text().strip()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=120
        )

    async def register(self, count: int, tag: str) -> list[Path]:
        """Register `count` identities through the real API; returns their state dirs."""
        async with self.client() as client:
            response = await client.post(
                "/api/v1/activations",
                json={"registration_limit": count, "tags": {"bench": tag}, "description": tag},
            )
            response.raise_for_status()
            activation = response.json()
            gate = asyncio.Semaphore(20)

            async def one(index: int) -> Path:
                key = SigningKey.generate()
                async with gate:
                    reply = await client.post(
                        "/api/v1/register",
                        json={
                            "activation_id": activation["activation_id"],
                            "activation_code": activation["activation_code"],
                            "public_key": base64.b64encode(bytes(key.verify_key)).decode(),
                            "tags": {},
                        },
                    )
                reply.raise_for_status()
                state = self.root / tag / f"agent-{index:04d}"
                save_identity(state, reply.json()["node_id"], self.url, key)
                return state

            return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def wait_online(self, tag: str, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        async with self.client() as client:
            while True:
                nodes = (
                    await client.get("/api/v1/nodes", params={"targets": f"tag:bench={tag}"})
                ).json()
                online = sum(n["ping_status"] == "Online" for n in nodes)
                if online == count:
                    return
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {online}/{count} {tag} agents came online")
                await asyncio.sleep(0.5)

    async def fan_out(self, tag: str) -> dict[str, float]:
        """Send `echo` to every node with the tag; figures from the server's own timestamps."""
        async with self.client() as client:
            response = await client.post(
                "/api/v1/commands",
                json={
                    "document_name": "Corral-RunShellScript",
                    "targets": [f"tag:bench={tag}"],
                    "parameters": {"commands": ["echo hi"]},
                    "max_concurrency": "50",
                    "max_errors": "0",
                },
            )
            response.raise_for_status()
            command_id = response.json()["command_id"]
            # Poll the light list view (no invocations) so polling barely loads the server.
            while True:
                listed = (await client.get("/api/v1/commands", params={"limit": 5})).json()
                if any(c["command_id"] == command_id and c["completed_at"] for c in listed):
                    break
                await asyncio.sleep(0.25)
            command = (await client.get(f"/api/v1/commands/{command_id}")).json()
        invocations = command["invocations"]
        failed = [i for i in invocations if i["status"] != "Success"]
        if failed:
            raise SystemExit(f"{len(failed)} invocations did not succeed: {failed[0]}")
        accepted = parse_time(command["requested_at"])
        stored = [parse_time(i["updated_at"]) for i in invocations]
        latencies = [
            parse_time(i["updated_at"]) - parse_time(i["dispatched_at"]) for i in invocations
        ]
        return {
            "count": len(invocations),
            "total_s": max(stored) - accepted,
            "p50_ms": statistics.median(latencies) * 1000,
            "p95_ms": percentile(latencies, 0.95) * 1000,
        }

    def start_process_agents(
        self, states: list[Path], env: dict[str, str] | None = None
    ) -> list[int]:
        pids = []
        for state in states:
            with (state.parent / f"{state.name}.log").open("ab") as log:
                process = subprocess.Popen(
                    [PYTHON, "-m", "corral", "agent", "run", "--state-dir", str(state),
                     "--log-level", "warning"],
                    stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                    start_new_session=True,
                )  # fmt: skip
            self.processes.append(process)
            pids.append(process.pid)
        return pids

    def start_swarm(self, states: list[Path]) -> int:
        listing = self.root / "swarm-dirs.txt"
        listing.write_text("\n".join(str(s) for s in states))
        code = (
            "import asyncio, sys\n"
            "from pathlib import Path\n"
            "from corral.agent.options import AgentOptions\n"
            "from corral.agent.swarm import run_swarm\n"
            "dirs = [Path(p) for p in Path(sys.argv[1]).read_text().split()]\n"
            "asyncio.run(run_swarm(dirs, AgentOptions.from_env()))\n"
        )
        with (self.root / "swarm.log").open("ab") as log:
            process = subprocess.Popen(
                [PYTHON, "-c", code, str(listing)],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
            )  # fmt: skip
        self.processes.append(process)
        return process.pid

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def _runs(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run whose total time is the median (lower median for an even count)."""
    ordered = sorted(runs, key=lambda r: r["total_s"])
    return ordered[(len(ordered) - 1) // 2]


def bare_python_rss() -> float:
    """KiB resident in a bare `python -c 'import asyncio, ssl'` process, read like the agent's."""
    code = "import asyncio, ssl, sys; print('ready', flush=True); sys.stdin.read()"
    process = subprocess.Popen(
        [PYTHON, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        return proc_status(process.pid, "VmRSS")
    finally:
        process.communicate("")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--swarm", type=int, default=1000, help="agents in the one-process swarm")
    parser.add_argument("--real", type=int, default=50, help="real agent processes")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure (median)")
    parser.add_argument(
        "--settle-seconds", type=float, default=7.0, help="pause between runs (agents clean up)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    args = parser.parse_args()

    # A 1,000-agent swarm holds a socket per agent and a pidfd per running worker.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    results: dict[str, Any] = {}
    floors, floor_cpu = [], []
    for _ in range(args.repeat):
        busy_before = machine_cpu()[0]
        floors.append(await floor(args.swarm))
        floor_cpu.append(machine_cpu()[0] - busy_before)
    floor_s = statistics.median(floors)
    results["floor_s"] = floors
    results["floor_machine_busy_cpu_s"] = floor_cpu
    print(
        f"(a) floor: {args.swarm} echo spawned from asyncio, concurrency 50: "
        f"median {floor_s:.3f} s of {_runs(floors)}"
        + (
            f" ({statistics.median(floor_cpu) / args.swarm * 1000:.2f} ms of CPU per echo)"
            if args.swarm
            else ""
        )
    )

    root = Path(tempfile.mkdtemp(prefix="corral-bench-"))
    bench = Bench(root)
    try:
        bench.start_server()
        assert bench.server is not None
        if args.swarm:
            states = await bench.register(args.swarm, "swarm")
            swarm_pid = bench.start_swarm(states)
            await bench.wait_online("swarm", args.swarm)
            results["swarm_descriptors"] = open_descriptors(swarm_pid)
            runs = []
            for attempt in range(args.repeat):
                if attempt:
                    # Agents remove acknowledged invocations' files once idle (5 s by
                    # default); let that finish so it is not counted in the next run.
                    await asyncio.sleep(args.settle_seconds)
                before = (
                    cpu_seconds(bench.server.pid),
                    cpu_seconds(swarm_pid),
                    cpu_seconds(swarm_pid, children=True),
                    machine_cpu(),
                )
                run = await bench.fan_out("swarm")
                busy, total = machine_cpu()
                run["server_cpu_s"] = cpu_seconds(bench.server.pid) - before[0]
                run["swarm_cpu_s"] = cpu_seconds(swarm_pid) - before[1]
                # The workers' CPU: the swarm reaps them (bash and its subshells).
                run["workers_cpu_s"] = cpu_seconds(swarm_pid, children=True) - before[2]
                run["machine_busy_cpu_s"] = busy - before[3][0]
                run["machine_busy_percent"] = 100 * (busy - before[3][0]) / (total - before[3][1])
                runs.append(run)
            results["swarm"] = runs
            swarm = _median_run(runs)
            print(
                f"(b) swarm N={swarm['count']:.0f} in one process: median {swarm['total_s']:.3f} s "
                f"of {_runs([r['total_s'] for r in runs])} (accepted -> last result stored), "
                f"{swarm['total_s'] / floor_s:.2f}x the floor; per invocation p50 "
                f"{swarm['p50_ms']:.1f} ms, p95 {swarm['p95_ms']:.1f} ms"
            )
            other = (
                swarm["machine_busy_cpu_s"]
                - swarm["server_cpu_s"]
                - swarm["swarm_cpu_s"]
                - swarm["workers_cpu_s"]
            )
            print(
                f"    CPU during that fan-out: server {swarm['server_cpu_s']:.2f} s, swarm "
                f"process {swarm['swarm_cpu_s']:.2f} s, its workers "
                f"{swarm['workers_cpu_s']:.2f} s, everything else {max(other, 0.0):.2f} s; "
                f"the machine was {swarm['machine_busy_percent']:.0f} % busy "
                f"({swarm['machine_busy_cpu_s'] / swarm['count'] * 1000:.2f} ms of CPU "
                f"per invocation)"
            )
        if args.real:
            states = await bench.register(args.real, "real")
            bench.start_process_agents(states)
            await bench.wait_online("real", args.real)
            runs = []
            for attempt in range(args.repeat):
                if attempt:
                    await asyncio.sleep(args.settle_seconds)
                runs.append(await bench.fan_out("real"))
            results["real"] = runs
            real = _median_run(runs)
            print(
                f"(b) real agent processes N={real['count']:.0f}: median {real['total_s']:.3f} s "
                f"of {_runs([r['total_s'] for r in runs])}; per invocation p50 "
                f"{real['p50_ms']:.1f} ms, p95 {real['p95_ms']:.1f} ms"
            )
        peak = proc_status(bench.server.pid, "VmHWM")
        results["server_peak_rss_mib"] = peak / 1024
        print(f"    server peak RSS: {peak / 1024:.1f} MiB")

        (idle_state,) = await bench.register(1, "idle")
        (idle_pid,) = bench.start_process_agents([idle_state])
        await bench.wait_online("idle", 1)
        results["agent_descriptors"] = open_descriptors(idle_pid)
        await asyncio.sleep(2)  # let start-up work settle
        cpu_before, wall_before = cpu_seconds(idle_pid), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        cpu = (cpu_seconds(idle_pid) - cpu_before) / (time.monotonic() - wall_before) * 100
        rss = proc_status(idle_pid, "VmRSS") / 1024
        bare = bare_python_rss() / 1024
        results.update(idle_agent_rss_mib=rss, idle_agent_cpu_percent=cpu, bare_python_rss_mib=bare)
        print(
            f"(c) one idle agent: RSS {rss:.1f} MiB (bare `python -c 'import asyncio, ssl'`: "
            f"{bare:.1f} MiB), CPU {cpu:.2f} % over {args.idle_seconds:.0f} s"
        )
    finally:
        bench.stop()
        if args.keep:
            print(f"working directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if "swarm_descriptors" in results:
        few, many = results["agent_descriptors"], results["swarm_descriptors"]
        costs: dict[int, list[float]] = {few: [], many: []}
        for _ in range(max(3, args.repeat)):  # alternated: the machine's noise hits both
            for fds in (few, many):
                costs[fds].append(spawn_cpu(fds) * 1000)
        results["spawn_cpu_ms"] = {"agent": costs[few], "swarm": costs[many]}
        agent_ms, swarm_ms = statistics.median(costs[few]), statistics.median(costs[many])
        print(
            f"(d) a worker's spawn (`bash -c :`): {agent_ms:.2f} ms of CPU from a process "
            f"holding {few} descriptors (a real agent), {swarm_ms:.2f} ms holding {many} "
            f"(the swarm): hosting {args.swarm} agents in one process adds "
            f"{swarm_ms - agent_ms:.2f} ms per invocation"
        )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
