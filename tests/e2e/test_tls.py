"""TLS end to end: a `--tls on` server, pinned agents over wss, and the CLI's CA file."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import socket
import ssl
import stat
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.server.tls import ensure_generated_tls, pem_fingerprint, subject_names
from tests.e2e.harness import PYTHON, Agent, Fleet, base_env, wait_for
from tests.e2e.test_proxy import ConnectProxy


@pytest.fixture
def tls_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A server with `--tls on` on 127.0.0.1 and no agents yet."""
    fleet = Fleet(tmp_path, tls=True)
    try:
        fleet.start_server()
        yield fleet
    except BaseException:
        print(fleet.logs())  # noqa: T201 - shown by pytest only when the test fails
        raise
    finally:
        fleet.stop()


def register(
    fleet: Fleet,
    activation: dict[str, str],
    state_dir: Path,
    *flags: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`corral agent register` against the fleet's server with extra flags."""
    return subprocess.run(
        [PYTHON, "-m", "corral", "agent", "register", "--server", fleet.server.url,
         "--activation-id", activation["activation_id"],
         "--activation-code", activation["activation_code"],
         "--state-dir", str(state_dir), *flags],
        capture_output=True, text=True, env={**base_env(), **(env or {})}, check=False,
        timeout=30,
    )  # fmt: skip


def test_server_cli_and_ca_fingerprint(tls_fleet: Fleet) -> None:
    server = tls_fleet.server
    assert server.url.startswith("https://")
    trusted = ssl.create_default_context(cafile=server.ca_file)
    with urllib.request.urlopen(server.url + "/healthz", context=trusted, timeout=5) as response:
        assert json.loads(response.read())["status"] == "ok"
    with urllib.request.urlopen(server.url + "/ca.pem", context=trusted, timeout=5) as response:
        published = response.read().decode()
    assert published == server.ca_file.read_text()
    fingerprint = "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(published)).hexdigest()

    created = server.cli_json("activation", "create", "--limit", "1")
    assert created["ca_fingerprint"] == fingerprint
    assert f"url={server.url}" in server.log()
    assert f"ca_fingerprint={fingerprint}" in server.log()

    human = server.cli("activation", "create")
    assert human.returncode == 0, human.stderr
    assert f"--server {server.url} " in human.stdout
    assert f"--ca-fingerprint {fingerprint} " in human.stdout

    untrusted = server.cli("nodes", "list", env={"CORRAL_CA_FILE": ""})
    assert untrusted.returncode == 5
    assert "could not be verified" in untrusted.stderr
    assert "--ca-file" in untrusted.stderr
    flagged = server.cli(
        "nodes", "list", "--ca-file", str(server.ca_file), env={"CORRAL_CA_FILE": ""}
    )
    assert flagged.returncode == 0, flagged.stderr


def test_pinned_agent_registers_and_runs_commands_over_wss(tls_fleet: Fleet) -> None:
    (agent,) = tls_fleet.add_agents(1, tags=["env=tls"])
    ca = agent.state_dir / "ca.pem"
    assert ca.read_text() == tls_fleet.server.ca_file.read_text()
    assert stat.S_IMODE(ca.stat().st_mode) == 0o600
    identity = json.loads((agent.state_dir / "identity.json").read_text())
    assert identity["trust"] == "pinned"
    assert identity["server_url"].startswith("https://")
    result = tls_fleet.server.cli(
        "run", "Corral-RunShellScript", "--targets", "tag:env=tls",
        "--param", "commands=echo over wss", "-o", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (invocation,) = result.json()["invocations"]
    assert invocation["stdout"] == "over wss\n"
    assert "wss://" in agent.log()


def test_wrong_fingerprint_is_refused_and_nothing_is_stored(tls_fleet: Fleet) -> None:
    activation = tls_fleet.server.cli_json("activation", "create", "--limit", "1")
    wrong = "sha256:" + "0" * 64
    state_dir = tls_fleet.root / "refused"
    refused = register(tls_fleet, activation, state_dir, "--ca-fingerprint", wrong)
    assert refused.returncode == 5
    assert wrong in refused.stderr
    assert activation["ca_fingerprint"] in refused.stderr
    assert not state_dir.exists()

    unpinned = register(tls_fleet, activation, state_dir)
    assert unpinned.returncode == 5
    assert "could not be verified" in unpinned.stderr
    assert "--ca-fingerprint" in unpinned.stderr
    assert not state_dir.exists()
    assert tls_fleet.server.cli_json("activation", "list")[0]["registrations_count"] == 0

    with_file = register(
        tls_fleet, activation, state_dir, "--ca-file", str(tls_fleet.server.ca_file)
    )
    assert with_file.returncode == 0, with_file.stderr
    assert json.loads((state_dir / "identity.json").read_text())["trust"] == "ca_file"


def test_agent_refuses_a_server_whose_certificate_is_from_another_ca(tls_fleet: Fleet) -> None:
    server = tls_fleet.server
    (agent,) = tls_fleet.add_agents(1)
    pinned = pem_fingerprint(server.ca_file.read_bytes())
    # The same server (data, port) restarted with certificates from an impostor's CA.
    impostor = ensure_generated_tls(
        tls_fleet.root / "impostor", subject_names("127.0.0.1"), dt.datetime.now(dt.UTC)
    )
    server.stop()
    server.extra_args = [
        "--tls-cert", str(impostor.cert_file), "--tls-key", str(impostor.key_file),
        "--tls-ca", str(tls_fleet.root / "impostor" / "ca.crt"),
    ]  # fmt: skip
    server.tls_ca_file = tls_fleet.root / "impostor" / "ca.crt"
    server.start()
    wait_for(lambda: agent.log().count("refusing the server") >= 2, timeout=15)
    assert f"the pinned CA {pinned}" in agent.log()
    command = server.cli_json(
        "run", "Corral-RunShellScript", "--targets", agent.node_id,
        "--param", "commands=echo should not run", "--no-wait",
    )  # fmt: skip
    time.sleep(1.0)
    shown = server.cli_json("commands", "show", command["command_id"])
    assert shown["invocations"][0]["status"] == "Pending"
    assert tls_fleet.online() == set()

    # Back to the real certificate: the agent, still retrying, connects and runs the command.
    server.stop()
    server.extra_args = []
    server.tls_ca_file = None
    server.start()
    tls_fleet.wait_online([agent.node_id])

    def finished() -> bool:
        show = server.cli_json("commands", "show", command["command_id"])
        return bool(show["invocations"][0]["status"] == "Success")

    wait_for(finished, timeout=15)


class TolerantProxy(ConnectProxy):
    """The CONNECT proxy, quiet when a client resets its tunnel (TLS clients may)."""

    def _tunnel(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            super()._tunnel(client)


def test_pinned_registration_and_wss_through_a_proxy(
    tls_fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.e2e.harness as harness

    with TolerantProxy() as proxy:
        proxied = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}", "NO_PROXY": ""}
        activation = tls_fleet.server.cli_json("activation", "create", "--limit", "1")
        agent = Agent(tls_fleet.server, tls_fleet.root / "p", tls_fleet.root / "p.log")
        tls_fleet.agents.append(agent)
        done = register(
            tls_fleet, activation, agent.state_dir,
            "--ca-fingerprint", activation["ca_fingerprint"], "-o", "json", env=proxied,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        agent.node_id = json.loads(done.stdout)["node_id"]
        registered_via = list(proxy.tunnels)
        assert f"127.0.0.1:{tls_fleet.server.port}" in registered_via
        monkeypatch.setattr(harness, "AGENT_ENV", {**harness.AGENT_ENV, **proxied})
        agent.start()
        tls_fleet.wait_online([agent.node_id])
        assert len(proxy.tunnels) > len(registered_via)
        result = tls_fleet.server.cli(
            "run", "Corral-RunShellScript", "--targets", agent.node_id,
            "--param", "commands=echo via proxy",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
