"""`make demo` works from a fresh checkout: server, three agents, a real fan-out, clean exit."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from tests.e2e.harness import PYTHON, base_env, kill_workers


def test_demo_runs_a_fan_out_and_cleans_up() -> None:
    done = subprocess.run(
        [PYTHON, "-m", "corral.demo", "--once"],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [
        line for line in done.stdout.splitlines() if re.match(r"mi-[0-9a-f]{17}\s+Success", line)
    ]
    assert len(rows) == 3, done.stdout
    assert done.stdout.count("hello from") == 4  # the command shown once, then each node's output
    assert "Demo stopped; every process ended." in done.stdout


def test_ctrl_c_stops_the_demo_and_removes_everything() -> None:
    demo = subprocess.Popen(
        [PYTHON, "-m", "corral.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=base_env(),
        # Started the way a background job is: with SIGINT ignored, which the demo overrides.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert demo.stdout is not None
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        first = lines[0]
        root = Path(re.search(r"data in (\S+)/server", first).group(1))  # type: ignore[union-attr]
        assert root.exists()
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
            if lines:  # the demo could not clean up after itself: do it for it
                match = re.search(r"data in (\S+)/server", lines[0])
                if match:
                    kill_workers(Path(match.group(1)))
    assert demo.returncode == 0
    assert "Demo stopped; every process ended." in rest
    assert not root.exists()
    leftovers = [
        p for p in Path("/proc").iterdir()
        if p.name.isdigit() and str(root).encode() in _cmdline(p)
    ]  # fmt: skip
    assert leftovers == []


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
