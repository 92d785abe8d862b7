"""The agent's state directory: node identity (id, server URL, Ed25519 key, TLS trust).

Layout: `DIR/identity.json` ({"node_id", "server_url", "trust"}), `DIR/node.key` (the
32-byte Ed25519 seed, hex) and, for the `pinned` and `ca_file` trust modes (see
tls.py), `DIR/ca.pem`. The directory is mode 0700 and every file 0600.
identity.json is written last: it is what marks the directory as registered.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from corral.agent.tls import CA_FILE, SYSTEM_TRUST, TRUST_MODES, TRUST_SYSTEM, ServerTrust
from corral.errors import ValidationError
from corral.protocol.requestsig import authorization_header, request_payload

NODE_ID_RE = re.compile(r"^mi-[0-9a-f]{17}$")
IDENTITY_FILE = "identity.json"
KEY_FILE = "node.key"


@dataclass(frozen=True)
class Identity:
    """Who this agent is and where its server lives."""

    node_id: str
    server_url: str
    signing_key: SigningKey
    trust: ServerTrust = SYSTEM_TRUST

    def sign(self, payload: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of `payload`."""
        return bytes(self.signing_key.sign(payload).signature)

    def authorization(self, method: str, target: str, body: bytes = b"") -> str:
        """A fresh `CorralNode ...` Authorization header for one request (or WS upgrade)."""
        stamp, nonce = int(time.time()), secrets.token_hex(16)
        signature = self.sign(request_payload(method, target, stamp, nonce, body))
        return authorization_header(self.node_id, stamp, nonce, signature)


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) if needed and make it mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def write_private_file(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600, fsynced."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def is_registered(state_dir: Path) -> bool:
    """True when the state directory already holds a registration."""
    return (state_dir / IDENTITY_FILE).exists() or (state_dir / KEY_FILE).exists()


def save_identity(
    state_dir: Path,
    node_id: str,
    server_url: str,
    key: SigningKey,
    trust: ServerTrust | None = None,
) -> None:
    """Store a fresh registration in `state_dir` (and the trusted CA, if there is one)."""
    if not NODE_ID_RE.match(node_id):
        raise ValidationError(f"server returned an invalid node id {node_id[:40]!r}", "node_id")
    trust = trust or SYSTEM_TRUST
    ensure_private_dir(state_dir)
    write_private_file(state_dir / KEY_FILE, bytes(key).hex().encode("ascii") + b"\n")
    if trust.ca_pem is not None:
        write_private_file(state_dir / CA_FILE, trust.ca_pem.encode("ascii"))
    else:
        (state_dir / CA_FILE).unlink(missing_ok=True)
    body = {"node_id": node_id, "server_url": server_url, "trust": trust.mode}
    write_private_file(state_dir / IDENTITY_FILE, json.dumps(body).encode("utf-8") + b"\n")


def load_identity(state_dir: Path) -> Identity:
    """Read the registration from `state_dir`; ValidationError if missing or damaged."""
    try:
        body = json.loads((state_dir / IDENTITY_FILE).read_text("utf-8"))
        seed = bytes.fromhex((state_dir / KEY_FILE).read_text("ascii").strip())
    except FileNotFoundError as exc:
        raise ValidationError(
            f"{state_dir} holds no registration; run `corral agent register` first", "state_dir"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ValidationError(f"registration in {state_dir} is unreadable", "state_dir") from exc
    node_id = body.get("node_id") if isinstance(body, dict) else None
    server_url = body.get("server_url") if isinstance(body, dict) else None
    if not isinstance(node_id, str) or not NODE_ID_RE.match(node_id):
        raise ValidationError(f"registration in {state_dir} has no valid node id", "state_dir")
    if not isinstance(server_url, str) or len(seed) != 32:
        raise ValidationError(f"registration in {state_dir} is damaged", "state_dir")
    mode = body.get("trust", TRUST_SYSTEM)
    if mode not in TRUST_MODES:
        raise ValidationError(f"registration in {state_dir} has an unknown trust mode", "state_dir")
    trust = ServerTrust(mode)
    if mode != TRUST_SYSTEM:
        ca_path = state_dir / CA_FILE
        try:
            trust = ServerTrust(mode, ca_path.read_text("ascii"), str(ca_path))
        except (OSError, ValueError) as exc:
            raise ValidationError(
                f"the server's CA certificate {ca_path} is missing or unreadable; register the "
                "node again with --force",
                "state_dir",
            ) from exc
    return Identity(node_id, server_url, SigningKey(seed), trust)
