"""The agent's TLS trust: fingerprint pinning, CA files, and refusing other certificates."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.server
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from websockets.asyncio.server import serve

from corral.agent import cli as agent_cli
from corral.agent import tls
from corral.agent.connection import Agent
from corral.agent.identity import load_identity, save_identity
from corral.errors import NotFoundError, UnavailableError, ValidationError
from corral.server.tls import ServerTls, ensure_generated_tls, parse_subject_name
from tests.agent.conftest import FAST, NODE_ID, ChannelServer, wait_until

FINGERPRINT = "sha256:" + "ab" * 32


def make_pki(root: Path, *names: str) -> ServerTls:
    """A CA and a server certificate for `names` (by default, loopback only)."""
    wanted = [parse_subject_name(n) for n in names or ("127.0.0.1",)]
    return ensure_generated_tls(root, wanted, dt.datetime.now(dt.UTC))


def server_context(pki: ServerTls) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.cert_file, pki.key_file)
    return context


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        (FINGERPRINT, FINGERPRINT),
        (FINGERPRINT.upper().replace("SHA256", "sha256"), FINGERPRINT),
        ("SHA256:" + ":".join(["AB"] * 32), FINGERPRINT),
        ("  " + FINGERPRINT + "\n", FINGERPRINT),
    ],
)
def test_fingerprint_forms(text: str, canonical: str) -> None:
    assert tls.parse_fingerprint(text) == canonical


@pytest.mark.parametrize(
    "text", ["", "ab" * 32, "sha1:" + "ab" * 20, "sha256:" + "ab" * 31, "sha256:" + "zz" * 32]
)
def test_bad_fingerprints(text: str) -> None:
    with pytest.raises(ValidationError, match="--ca-fingerprint"):
        tls.parse_fingerprint(text)


def test_fingerprint_matches_the_servers(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    assert tls.pem_fingerprint(pki.ca_pem.decode()) == pki.ca_fingerprint
    assert tls.fingerprints_match(pki.ca_fingerprint, pki.ca_fingerprint)
    assert not tls.fingerprints_match(pki.ca_fingerprint, FINGERPRINT)
    with pytest.raises(ValidationError, match="exactly one"):
        tls.single_certificate_der((pki.ca_pem * 2).decode(), "x")


class _CaHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.path != "/ca.pem" or not self.body:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def https_server(pki: ServerTls, body: bytes) -> Iterator[str]:
    """A tiny HTTPS server that serves `body` at /ca.pem with `pki`'s certificate."""
    handler = type("Handler", (_CaHandler,), {"body": body})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = server_context(pki).wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_fetch_keeps_a_ca_whose_fingerprint_matches(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with https_server(pki, pki.ca_pem) as url:
        trust = tls.fetch_pinned_ca(url, pki.ca_fingerprint, timeout=5)
    assert trust.mode == tls.TRUST_PINNED
    assert trust.ca_pem == pki.ca_pem.decode()


def test_fetch_refuses_another_ca_naming_both_fingerprints(tmp_path: Path) -> None:
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other")
    with https_server(pki, other.ca_pem) as url, pytest.raises(UnavailableError) as refused:
        tls.fetch_pinned_ca(url, pki.ca_fingerprint, timeout=5)
    assert pki.ca_fingerprint in refused.value.message
    assert other.ca_fingerprint in refused.value.message


def test_fetch_from_a_server_without_tls_ca_is_not_found(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    with https_server(pki, b"") as url, pytest.raises(NotFoundError, match=r"/ca\.pem"):
        tls.fetch_pinned_ca(url, pki.ca_fingerprint, timeout=5)


def test_identity_keeps_the_trust_and_the_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    state = tmp_path / "state"
    trust = tls.ServerTrust(tls.TRUST_PINNED, pki.ca_pem.decode())
    save_identity(state, NODE_ID, "https://corral:8443", SigningKey.generate(), trust)
    assert (state / "ca.pem").stat().st_mode & 0o777 == 0o600
    loaded = load_identity(state)
    assert loaded.trust.mode == tls.TRUST_PINNED
    assert loaded.trust.ca_pem == pki.ca_pem.decode()
    # Registering again without TLS removes the old CA.
    save_identity(state, NODE_ID, "http://corral:8443", SigningKey.generate())
    assert not (state / "ca.pem").exists()
    assert load_identity(state).trust.mode == tls.TRUST_SYSTEM


@contextlib.asynccontextmanager
async def tls_channel(node_key: SigningKey, pki: ServerTls) -> AsyncIterator[ChannelServer]:
    """The test channel server behind TLS with `pki`'s certificate."""
    fake = ChannelServer(bytes(node_key.verify_key))
    async with serve(fake._handler, "127.0.0.1", 0, ssl=server_context(pki)) as server:
        fake.server = server
        fake.url = f"https://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
        yield fake


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[None]:
    """Run `agent` for the duration of the block."""
    task = asyncio.create_task(agent.run())
    try:
        yield
    finally:
        await agent.stop()
        await task


async def test_pinned_agent_connects_whatever_name_it_dials(
    tmp_path: Path, state_dir: Path, node_key: SigningKey
) -> None:
    # The certificate names only corral.example; the agent dials 127.0.0.1.
    pki = make_pki(tmp_path / "pki", "corral.example")
    async with tls_channel(node_key, pki) as channel:
        trust = tls.ServerTrust(tls.TRUST_PINNED, pki.ca_pem.decode())
        save_identity(state_dir, NODE_ID, channel.url, node_key, trust)
        agent = Agent(state_dir, FAST)
        async with running(agent):
            await wait_until(lambda: channel.welcomed == 1)


async def test_a_pinned_leaf_certificate_is_its_own_anchor(
    tmp_path: Path, state_dir: Path, node_key: SigningKey
) -> None:
    # Operator certificates without --tls-ca: the server publishes (and agents pin) the leaf.
    pki = make_pki(tmp_path / "pki", "corral.example")
    async with tls_channel(node_key, pki) as channel:
        trust = tls.ServerTrust(tls.TRUST_PINNED, pki.cert_file.read_text())
        save_identity(state_dir, NODE_ID, channel.url, node_key, trust)
        agent = Agent(state_dir, FAST)
        async with running(agent):
            await wait_until(lambda: channel.welcomed == 1)


async def test_pinned_agent_refuses_a_certificate_from_another_ca(
    tmp_path: Path, state_dir: Path, node_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    pinned, other = make_pki(tmp_path / "pinned"), make_pki(tmp_path / "other")
    caplog.set_level(logging.ERROR, logger="corral.agent.connection")
    async with tls_channel(node_key, other) as channel:
        trust = tls.ServerTrust(tls.TRUST_PINNED, pinned.ca_pem.decode())
        save_identity(state_dir, NODE_ID, channel.url, node_key, trust)
        agent = Agent(state_dir, FAST)
        async with running(agent):
            await wait_until(lambda: caplog.text.count("refusing the server") >= 3)
            assert channel.attempts == 0
            assert agent.connections == 0
    assert pinned.ca_fingerprint in caplog.text
    assert "could not be verified" in caplog.text


async def test_ca_file_checks_the_host_name(
    tmp_path: Path, state_dir: Path, node_key: SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki", "corral.example")
    caplog.set_level(logging.ERROR, logger="corral.agent.connection")
    async with tls_channel(node_key, pki) as channel:
        save_identity(state_dir, NODE_ID, channel.url, node_key)
        agent = Agent(state_dir, FAST, ca_file=tmp_path / "pki" / "ca.crt")
        async with running(agent):
            await wait_until(lambda: caplog.text.count("refusing the server") >= 2)
            assert channel.welcomed == 0
    assert "the CA file" in caplog.text


async def test_ca_file_given_to_run_is_trusted(
    tmp_path: Path, state_dir: Path, node_key: SigningKey
) -> None:
    pki = make_pki(tmp_path / "pki")
    async with tls_channel(node_key, pki) as channel:
        save_identity(state_dir, NODE_ID, channel.url, node_key)
        agent = Agent(state_dir, FAST, ca_file=tmp_path / "pki" / "ca.crt")
        async with running(agent):
            await wait_until(lambda: channel.welcomed == 1)


def test_unreadable_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read --ca-file"):
        tls.trust_from_ca_file(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("junk\n")
    with pytest.raises(ValidationError, match="no usable PEM"):
        tls.trust_from_ca_file(tmp_path / "junk.pem")


@pytest.mark.parametrize(
    ("server", "flags", "message"),
    [
        ("http://corral:8443", ["--ca-fingerprint", FINGERPRINT], "needs an https:// server URL"),
        ("http://corral:8443", ["--ca-file", "ca.pem"], "needs an https:// server URL"),
        (
            "https://corral:8443",
            ["--ca-fingerprint", FINGERPRINT, "--ca-file", "ca.pem"],
            "not both",
        ),
        ("https://corral:8443", ["--ca-fingerprint", "md5:abc"], "64 hex digits"),
    ],
)
def test_register_flag_mistakes_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    server: str,
    flags: list[str],
    message: str,
) -> None:
    state = tmp_path / "state"
    code = agent_cli.main(
        ["register", "--server", server, "--activation-id", "a", "--activation-code", "c",
         "--state-dir", str(state), *flags]
    )  # fmt: skip
    assert code == 2
    assert message in capsys.readouterr().err
    assert not state.exists()
