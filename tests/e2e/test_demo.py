"""`make demo` works from a fresh checkout: server, three agents, a real fan-out, clean exit."""

from __future__ import annotations

import re
import subprocess

from tests.e2e.harness import PYTHON, base_env


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
