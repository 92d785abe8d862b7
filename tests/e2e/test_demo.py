"""`make demo` works from a fresh checkout: server, three agents, a real fan-out, clean exit."""

from __future__ import annotations

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
    assert done.stdout.count("hello from") == 3
    assert "Demo stopped; every process ended." in done.stdout
    assert "Success" in done.stdout
