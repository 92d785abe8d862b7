"""`corral cp` end to end: a real server, a real agent and the real CLI, on this machine's
files (the node's files are this machine's too). Large files both ways, trees with
modes, resume after a cut connection and after a killed CLI, a corrupted partial file,
and policy on paths (including a symbolic link that leads out of the allowed ones)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import PYTHON, CliResult, Fleet, base_env, wait_for
from tests.e2e.relay import DOWN, UP, Relay

MB = 1024 * 1024


@pytest.fixture(scope="module")
def cp_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One server and one agent for the whole module."""
    fleet = Fleet(tmp_path_factory.mktemp("cp"))
    try:
        fleet.start_server()
        fleet.add_agents(1, tags=["env=dev"])
        yield fleet
    except BaseException:
        print(fleet.logs())  # noqa: T201 - shown by pytest only when the test fails
        raise
    finally:
        fleet.stop()


@pytest.fixture
def base() -> Iterator[Path]:
    """A fresh directory under /tmp, which is where policies in these tests point."""
    path = Path("/tmp") / f"corral-cp-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def relay(cp_fleet: Fleet) -> Iterator[Relay]:
    """A TCP relay in front of the server, for the CLI's connections."""
    found = Relay(cp_fleet.server.port)
    try:
        yield found
    finally:
        found.close()


def cp(fleet: Fleet, *args: str, via: Relay | None = None, token: str | None = None) -> CliResult:
    env: dict[str, str] = {}
    if via is not None:
        env["CORRAL_SERVER"] = via.url
    if token is not None:
        env["CORRAL_TOKEN"] = token
    return fleet.server.cli("cp", *args, "-o", "json", env=env, timeout=60)


def ok(result: CliResult) -> Any:
    assert result.returncode == 0, result.stderr
    return result.json()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def node(fleet: Fleet) -> str:
    return fleet.agents[0].node_id


def transfer_events(fleet: Fleet) -> list[dict[str, Any]]:
    """`file:Transfer` audit records, newest first."""
    found = fleet.server.cli_json("audit", "list", "--action", "file:Transfer", "--limit", "50")
    return list(found)


def event_for(
    fleet: Fleet, path: Path, outcome: str | None = None, **match: object
) -> dict[str, Any]:
    """The newest `file:Transfer` record of `path` with that outcome whose details match."""

    def find() -> dict[str, Any] | None:
        for record in transfer_events(fleet):
            details = record["details"]
            if (
                details.get("path") == str(path)
                and outcome in (None, record["outcome"])
                and all(details.get(k) == v for k, v in match.items())
            ):
                return record
        return None

    return wait_for(find, timeout=5)  # type: ignore[no-any-return]


def test_a_multi_megabyte_file_both_ways(cp_fleet: Fleet, base: Path, tmp_path: Path) -> None:
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(5 * MB))
    source.chmod(0o640)
    up = ok(cp(cp_fleet, str(source), f"{node(cp_fleet)}:{base}/"))
    remote = base / "blob.bin"
    assert sha(remote) == sha(source) == up["sha256"]
    assert remote.stat().st_mode & 0o777 == 0o640
    assert remote.stat().st_mtime_ns == source.stat().st_mtime_ns
    assert (up["direction"], up["remote_path"], up["bytes"]) == ("upload", str(remote), 5 * MB)
    assert (up["bytes_transferred"], up["bytes_resumed"], up["attempts"]) == (5 * MB, 0, 1)
    assert sorted(os.listdir(base)) == ["blob.bin"]  # no partial or state file left
    down = ok(cp(cp_fleet, f"{node(cp_fleet)}:{remote}", str(tmp_path / "back.bin")))
    assert sha(tmp_path / "back.bin") == sha(source) == down["sha256"]
    assert (tmp_path / "back.bin").stat().st_mode & 0o777 == 0o640
    # Audited: the request (middleware) and the completed file with size and checksum.
    event = event_for(cp_fleet, remote, direction="upload")
    assert event["outcome"] == "allowed"
    assert event["principal"] == "user:admin"
    assert event["details"]["sha256"] == up["sha256"]
    assert event["details"]["size"] == 5 * MB
    assert event_for(cp_fleet, remote, direction="download")["details"]["sha256"] == up["sha256"]
    requests = cp_fleet.server.cli_json("audit", "list", "--action", "file:Upload")
    assert f"file:{remote}" in requests[0]["resources"]
    assert requests[0]["details"]["transfer_id"] == up["transfer_id"]


def make_tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "bin" / "run.sh").chmod(0o755)
    (root / "conf" / "deep" / "er").mkdir(parents=True)
    (root / "conf" / "secret.key").write_bytes(os.urandom(3000))
    (root / "conf" / "secret.key").chmod(0o600)
    (root / "conf" / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    (root / "conf" / "deep").chmod(0o700)
    (root / "empty-dir").mkdir()
    (root / "big.bin").write_bytes(os.urandom(2 * MB))
    (root / "link").symlink_to("/etc/hostname")


def listing(root: Path) -> dict[str, tuple[str, str, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            continue
        kind = "dir" if path.is_dir() else "file"
        digest = "" if kind == "dir" else sha(path)
        out[str(path.relative_to(root))] = (kind, oct(path.stat().st_mode & 0o777), digest)
    return out


def test_a_directory_tree_both_ways(cp_fleet: Fleet, base: Path, tmp_path: Path) -> None:
    make_tree(tmp_path / "app")
    (tmp_path / "app").chmod(0o750)
    plain = cp(cp_fleet, str(tmp_path / "app"), f"{node(cp_fleet)}:{base}/app")
    assert plain.returncode == 2
    assert "--recursive" in plain.stderr
    up = ok(cp(cp_fleet, "-r", str(tmp_path / "app"), f"{node(cp_fleet)}:{base}/app"))
    assert listing(base / "app") == listing(tmp_path / "app")
    assert (base / "app").stat().st_mode & 0o777 == 0o750
    assert (base / "app" / "conf" / "deep").stat().st_mode & 0o777 == 0o700
    assert not (base / "app" / "link").exists()
    assert (up["files"], up["directories"], up["skipped"]) == (4, 6, ["link"])
    down = ok(cp(cp_fleet, "--recursive", f"{node(cp_fleet)}:{base}/app", str(tmp_path / "back")))
    assert listing(tmp_path / "back") == listing(tmp_path / "app")
    assert (tmp_path / "back" / "conf" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (down["kind"], down["files"], down["directories"]) == ("directory", 4, 6)
    tree = event_for(cp_fleet, base / "app", direction="download", kind="directory")
    assert (tree["details"]["files"], tree["details"]["size"]) == (4, up["bytes"])
    # Copying the tree again merges into it and sends nothing: every file is there already.
    again = ok(cp(cp_fleet, "-r", str(tmp_path / "app"), f"{node(cp_fleet)}:{base}/app"))
    assert (again["bytes_transferred"], again["bytes_resumed"]) == (0, up["bytes"])
    assert not (base / "app" / "app").exists()


RESUMED = re.compile(r"transfer resuming path=(\S+) offset=(\d+) size=(\d+)")


def test_an_upload_resumes_after_its_connection_is_cut(
    cp_fleet: Fleet, base: Path, tmp_path: Path, relay: Relay
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(6 * MB))
    relay.cut_after(UP, 1 * MB)
    result = ok(cp(cp_fleet, str(source), f"{node(cp_fleet)}:{base}/big.bin", via=relay))
    assert relay.cuts == 1
    assert result["attempts"] == 2
    assert sha(base / "big.bin") == sha(source) == result["sha256"]
    # The node resumed from what it had written; the second attempt sent only the rest.
    resumed = int(result["bytes_resumed"])
    assert 0 < resumed < 6 * MB
    lines = RESUMED.findall(cp_fleet.agents[0].log())
    assert (str(base / "big.bin"), str(resumed), str(6 * MB)) in lines
    event = event_for(cp_fleet, base / "big.bin", outcome="allowed")
    assert event["details"]["resumed_from"] == resumed
    assert event["details"]["bytes_transferred"] == 6 * MB - resumed
    cut = event_for(cp_fleet, base / "big.bin", outcome="failed")
    assert "connection was lost" in cut["error"]
    assert sorted(os.listdir(base)) == ["big.bin"]


def test_a_download_resumes_after_its_connection_is_cut(
    cp_fleet: Fleet, base: Path, tmp_path: Path, relay: Relay
) -> None:
    remote = base / "big.bin"
    remote.write_bytes(os.urandom(6 * MB))
    relay.cut_after(DOWN, 2 * MB)
    result = ok(cp(cp_fleet, f"{node(cp_fleet)}:{remote}", str(tmp_path / "got.bin"), via=relay))
    assert (relay.cuts, result["attempts"]) == (1, 2)
    assert sha(tmp_path / "got.bin") == sha(remote)
    resumed = int(result["bytes_resumed"])
    assert 0 < resumed < 6 * MB
    event = event_for(cp_fleet, remote, direction="download", outcome="allowed")
    assert (event["details"]["resumed_from"], event["details"]["bytes_transferred"]) == (
        resumed,
        6 * MB - resumed,
    )


def test_a_killed_download_resumes_when_run_again(
    cp_fleet: Fleet, base: Path, tmp_path: Path, relay: Relay
) -> None:
    remote = base / "big.bin"
    remote.write_bytes(os.urandom(6 * MB))
    relay.hold_after(DOWN, 2 * MB)
    env = base_env()
    env.update(CORRAL_SERVER=relay.url, CORRAL_TOKEN=cp_fleet.server.token)
    args = [PYTHON, "-m", "corral", "cp", f"{node(cp_fleet)}:{remote}", str(tmp_path / "got.bin")]
    partial = tmp_path / ".got.bin.corral-partial"
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert relay.held.wait(20), "the transfer never got going"
        # The relay let 2 MiB through and holds the rest: kill the CLI mid-file.
        wait_for(lambda: partial.exists() and partial.stat().st_size >= MB)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
        relay.cut_held()
    held = partial.stat().st_size
    assert MB <= held < 6 * MB
    again = ok(cp(cp_fleet, f"{node(cp_fleet)}:{remote}", str(tmp_path / "got.bin")))
    assert (again["attempts"], again["bytes_resumed"]) == (1, held)
    assert again["bytes_transferred"] == 6 * MB - held
    assert sha(tmp_path / "got.bin") == sha(remote)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got.bin"]


def test_a_corrupted_partial_file_is_detected_and_not_trusted(
    cp_fleet: Fleet, base: Path, tmp_path: Path, relay: Relay
) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(4 * MB))
    relay.cut_after(UP, 1 * MB)
    gave_up = cp(cp_fleet, "--retries", "0", str(source), f"{node(cp_fleet)}:{base}/", via=relay)
    assert gave_up.returncode == 5, gave_up.stderr
    assert json.loads(gave_up.stderr)["error"]["type"] == "UnavailableError"
    assert not (base / "big.bin").exists()  # nothing under the final name
    partial = base / ".big.bin.corral-partial"
    data = bytearray(partial.read_bytes())
    assert data
    data[len(data) // 2] ^= 0xFF  # one flipped bit on the node's disk
    partial.write_bytes(bytes(data))
    again = ok(cp(cp_fleet, str(source), f"{node(cp_fleet)}:{base}/"))
    assert again["restarted"] == [str(base / "big.bin")]
    assert (again["bytes_resumed"], again["bytes_transferred"]) == (0, 4 * MB)
    assert sha(base / "big.bin") == sha(source)
    assert sorted(os.listdir(base)) == ["big.bin"]


def test_paths_outside_the_policy_are_refused_and_nothing_is_written(
    cp_fleet: Fleet, base: Path, tmp_path: Path
) -> None:
    allowed, secret = base / "allowed", base / "secret"
    allowed.mkdir()
    secret.mkdir()
    (secret / "s.txt").write_text("classified\n")
    (allowed / "escape").symlink_to(secret)
    policy = {
        "statements": [
            {
                "effect": "allow",
                "actions": ["file:Upload", "file:Download"],
                "resources": ["node:*", f"file:{allowed}/*"],
            }
        ]
    }
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    role = f"files-{uuid.uuid4().hex[:6]}"
    cp_fleet.server.cli_json("role", "create", role, "--policy", str(tmp_path / "policy.json"))
    token = cp_fleet.server.cli_json("user", "create", f"u-{role}", "--role", role)["token"]
    source = tmp_path / "f.txt"
    source.write_text("hello\n")
    target = f"/etc/corral-cp-{uuid.uuid4().hex[:8]}"

    refused = cp(cp_fleet, str(source), f"{node(cp_fleet)}:{target}", token=token)
    assert refused.returncode == 4, refused.stderr
    error = json.loads(refused.stderr)["error"]
    assert error["type"] == "AccessDeniedError"
    assert f"file:Upload on file:{target}" in error["message"]
    assert not Path(target).exists()
    # `..` is refused before policy is even asked.
    dotdot = cp(cp_fleet, str(source), f"{node(cp_fleet)}:{allowed}/../secret/x", token=token)
    assert dotdot.returncode == 2
    # Inside the allowed directory it works, both ways.
    ok(cp(cp_fleet, str(source), f"{node(cp_fleet)}:{allowed}/f.txt", token=token))
    assert (allowed / "f.txt").read_text() == "hello\n"
    ok(cp(cp_fleet, f"{node(cp_fleet)}:{allowed}/f.txt", str(tmp_path / "g.txt"), token=token))
    # A link inside the allowed directory leads out of it: the node resolves the path,
    # the server checks the real one, and refuses before anything is read or written.
    through_link = f"{node(cp_fleet)}:{allowed}/escape/s.txt"
    leak = cp(cp_fleet, through_link, str(tmp_path / "leak.txt"), token=token)
    assert leak.returncode == 4, leak.stderr
    assert f"file:{secret}/s.txt" in json.loads(leak.stderr)["error"]["message"]
    assert not (tmp_path / "leak.txt").exists()
    plant = cp(cp_fleet, str(source), f"{node(cp_fleet)}:{allowed}/escape/planted", token=token)
    assert plant.returncode == 4, plant.stderr
    assert sorted(os.listdir(secret)) == ["s.txt"]
    denied = event_for(cp_fleet, secret / "planted", outcome="denied")
    assert denied["principal"] == f"user:u-{role}"


def test_every_entry_of_a_tree_is_checked(cp_fleet: Fleet, base: Path, tmp_path: Path) -> None:
    """A deny on part of a tree stops the copy at that entry: nothing below it is written."""
    policy = {
        "statements": [
            {"effect": "allow", "actions": ["file:*"], "resources": ["node:*", f"file:{base}/*"]},
            {"effect": "deny", "actions": ["file:Upload"], "resources": [f"file:{base}/*/private"]},
        ]
    }
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    role = f"tree-{uuid.uuid4().hex[:6]}"
    cp_fleet.server.cli_json("role", "create", role, "--policy", str(tmp_path / "policy.json"))
    token = cp_fleet.server.cli_json("user", "create", f"u-{role}", "--role", role)["token"]
    (tmp_path / "tree" / "private").mkdir(parents=True)
    (tmp_path / "tree" / "a.txt").write_text("a\n")
    (tmp_path / "tree" / "private" / "key").write_text("k\n")
    target = f"{node(cp_fleet)}:{base}/tree"
    refused = cp(cp_fleet, "-r", str(tmp_path / "tree"), target, token=token)
    assert refused.returncode == 4, refused.stderr
    assert f"file:{base}/tree/private" in json.loads(refused.stderr)["error"]["message"]
    assert (base / "tree" / "a.txt").read_text() == "a\n"  # entries before it are in place
    assert not (base / "tree" / "private").exists()
