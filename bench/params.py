"""Parameter Store read throughput: GetParameter requests/s and p99 latency.

    .venv/bin/python bench/params.py [--backend sqlite|postgresql|both] [--seconds 10]
                                     [--connections 32] [--repeat 3] [--json]

One `corral server` process pinned to CPU 0 (authentication, policy checks and the
audit log all on), `wrk` pinned to CPU 1, a keep-alive connection pool. For each
backend it measures, `--repeat` times each, and prints the medians of:

* `GET /healthz` (no auth, no audit: the process's ceiling),
* a plain String GetParameter (`/api/v1/parameters/value?name=...`),
* a decrypted SecureString GetParameter (`&decrypt=true`),

with requests/s and p99 latency from wrk's `--latency` report. `wrk` comes from
Debian's packages (`apt-get install wrk`); PostgreSQL must be on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

PYTHON = sys.executable
PG_USER = os.environ.get("CORRAL_TEST_PG_USER", getpass.getuser())
PG_ADMIN = f"postgresql://{PG_USER}@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not become healthy")


def _unit_seconds(value: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", value)
    if match is None:
        raise ValueError(value)
    factor = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[match.group(2)]
    return float(match.group(1)) * factor


def run_wrk(url: str, token: str | None, seconds: int, connections: int) -> dict[str, float]:
    """One wrk run on CPU 1: requests/s, p50 and p99 latency (ms), non-2xx count."""
    args = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    done = subprocess.run([*args, url], capture_output=True, text=True, check=True)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _unit_seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _unit_seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def create_pg_database() -> tuple[str, str]:
    name = "corral_bench_" + uuid.uuid4().hex[:8]
    subprocess.run(
        ["psql", PG_ADMIN, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True
    )
    return name, f"postgresql://{PG_USER}@127.0.0.1:5432/{name}"


def drop_pg_database(name: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
        check=False,
        capture_output=True,
    )


def measure(backend: str, seconds: int, connections: int, repeat: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="corral-bench-params-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    database: tuple[str, str] | None = None
    args = [
        "taskset", "-c", "0", PYTHON, "-m", "corral", "server", "--data-dir", str(root / "data"),
        "--listen", f"127.0.0.1:{port}", "--log-level", "warning",
        # wrk opens many connections quickly; nothing here fails authentication.
        "--auth-failure-limit", "1000000",
    ]  # fmt: skip
    if backend == "postgresql":
        database = create_pg_database()
        args += ["--database-url", database[1]]
    log = (root / "server.log").open("wb")
    server = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, server)
        token = (root / "data" / "admin-token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        for body in (
            {"name": "/bench/app/url", "value": "postgres://db.internal/app"},
            {"name": "/bench/app/password", "value": "s3cr3t-" + "x" * 24, "type": "SecureString"},
        ):
            httpx.post(url + "/api/v1/parameters", json=body, headers=headers).raise_for_status()
        targets = {
            "healthz": (url + "/healthz", None),
            "get_plain": (url + "/api/v1/parameters/value?name=/bench/app/url", token),
            "get_decrypted": (
                url + "/api/v1/parameters/value?name=/bench/app/password&decrypt=true",
                token,
            ),
        }
        results: dict[str, Any] = {}
        for name, (target, auth) in targets.items():
            run_wrk(target, auth, 2, connections)  # warm-up
            runs = [run_wrk(target, auth, seconds, connections) for _ in range(repeat)]
            results[name] = {
                key: round(statistics.median(r[key] for r in runs), 2) for key in runs[0]
            }
            results[name]["runs_rps"] = [round(r["rps"]) for r in runs]
        verify = httpx.post(url + "/api/v1/audit/verify", headers=headers, timeout=600).json()
        results["audit_records"] = verify["records"]
        results["audit_ok"] = verify["ok"]
        return results
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        if database is not None:
            drop_pg_database(database[0])
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if os.cpu_count() is None or (os.cpu_count() or 1) < 2:
        raise SystemExit("needs two CPUs: the server on CPU 0, wrk on CPU 1")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    report = {b: measure(b, args.seconds, args.connections, args.repeat) for b in backends}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for backend, results in report.items():
        print(f"{backend}: (server on 1 core; wrk on the other; {args.connections} connections)")
        for name in ("healthz", "get_plain", "get_decrypted"):
            r = results[name]
            print(
                f"  {name:14s} {r['rps']:8.0f} req/s   p50 {r['p50_ms']:6.2f} ms   "
                f"p99 {r['p99_ms']:6.2f} ms   non-2xx {r['non_2xx']:.0f}   runs {r['runs_rps']}"
            )
        print(f"  audit records {results['audit_records']} (chain ok: {results['audit_ok']})")


if __name__ == "__main__":
    main()
