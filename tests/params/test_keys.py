"""Envelope encryption and key-encryption keys."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from corral.errors import ConflictError, NotFoundError, ValidationError
from corral.params.keys import DecryptionError, Keyring, key_name, parse_sealed


def test_seal_open_and_bind_to_the_name(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    ring.ensure_default()
    sealed = ring.seal("default", "/app/db", "hunter2")
    assert sealed.startswith("corral:v1:default:1:")
    assert "hunter2" not in sealed
    assert ring.open("/app/db", sealed) == "hunter2"
    assert ring.seal("default", "/app/db", "hunter2") != sealed  # fresh data key and nonce
    with pytest.raises(DecryptionError):
        ring.open("/app/other", sealed)  # bound to the parameter's name
    damaged = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    with pytest.raises(DecryptionError):
        ring.open("/app/db", damaged)
    with pytest.raises(DecryptionError):
        ring.open("/app/db", "plain text")


def test_key_files_are_private_and_outside_the_value(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    info = ring.create("payments")
    assert (info.name, info.current_version, info.versions) == ("payments", 1, 1)
    path = tmp_path / "keys" / "payments.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    material = json.loads(path.read_text())["versions"]["1"]
    assert material not in ring.seal("payments", "x", "v")
    with pytest.raises(ConflictError):
        ring.create("payments")
    with pytest.raises(NotFoundError):
        ring.seal("missing", "x", "v")
    assert [k.name for k in ring.list()] == ["payments"]


def test_rotation_rewraps_and_old_values_stay_readable(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    ring.create("k")
    old = ring.seal("k", "/p", "before rotation")
    assert ring.rewrap(old) is None  # already current
    info = ring.rotate("k")
    assert (info.current_version, info.versions) == (2, 2)
    assert ring.open("/p", old) == "before rotation"  # version 1 is kept
    rewrapped = ring.rewrap(old)
    assert rewrapped is not None
    assert parse_sealed(rewrapped).kek_version == 2
    assert parse_sealed(rewrapped).body == parse_sealed(old).body  # only the data key moved
    assert ring.open("/p", rewrapped) == "before rotation"
    assert parse_sealed(ring.seal("k", "/p", "new")).kek_version == 2
    # A fresh Keyring (another process) reads the same files.
    assert Keyring(tmp_path / "keys").open("/p", rewrapped) == "before rotation"


def test_key_names() -> None:
    assert key_name(None) == "default"
    assert key_name("alias/aws/ssm") == "default"
    assert key_name("alias/payments") == "payments"
    with pytest.raises(ValidationError):
        key_name("../etc/passwd")
