"""The real `python -m corral` process: exit codes and stream separation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def corral(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m corral ARGS` with an isolated config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_CONFIG"] = str(tmp_path / "config.toml")
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_unreachable_server_exits_5(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = corral("nodes", "list", "--server", url, "-o", "json", tmp_path=tmp_path)
    assert proc.returncode == 5
    assert proc.stdout == ""
    error = json.loads(proc.stderr)["error"]
    assert error["type"] == "UnavailableError"
    assert url in error["message"]


def test_usage_error_exits_2(tmp_path: Path) -> None:
    proc = corral("doc", "show", "Doc:notaversion", "--server", "http://x", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "invalid document version" in proc.stderr
