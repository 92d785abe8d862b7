"""Envelope encryption for SecureString values, and the key-encryption keys (KEKs).

Each value gets a fresh 256-bit data key; the value is sealed with AES-256-GCM under
that data key (bound to the parameter's name), and the data key is sealed with
AES-256-GCM under the current version of a named KEK. The stored string is

    corral:v1:KEY:KEKVERSION:WRAPPED_DATA_KEY:SEALED_VALUE      (base64url parts)

and is what a SecureString's value shows without decryption. KEKs never enter the
database: each is a file `KEYDIR/NAME.key` (JSON, mode 0600; KEYDIR is
`DATA_DIR/keys` unless configured) holding every version, so values wrapped under
an old version stay readable while a rotation re-wraps them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from corral.errors import ConflictError, CorralError, NotFoundError, ValidationError

PREFIX = "corral:v1:"
DEFAULT_KEY = "default"
# What boto3 and the AWS CLI send for "the account's default key".
DEFAULT_KEY_ALIASES = ("alias/aws/ssm", "aws/ssm")
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_NONCE = 12


class DecryptionError(CorralError):
    """A sealed value could not be opened (wrong key, damaged or unknown KEK version)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_name(raw: str | None) -> str:
    """A KEK name (None, `alias/aws/ssm` and `aws/ssm` mean `default`)."""
    if raw is None or raw in DEFAULT_KEY_ALIASES or raw == "":
        return DEFAULT_KEY
    name = raw.removeprefix("alias/")
    if not _KEY_NAME.match(name):
        raise ValidationError(
            f"key name {raw[:70]!r} must be 1-64 letters, digits and _ . -", "key_id"
        )
    return name


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A KEK's metadata (never its material)."""

    name: str
    current_version: int
    versions: int
    created_at: float
    rotated_at: float | None


@dataclass(frozen=True, slots=True)
class Sealed:
    """A parsed sealed value."""

    key: str
    kek_version: int
    wrapped: bytes
    body: bytes


def parse_sealed(text: str) -> Sealed:
    """Split a stored SecureString; DecryptionError when it is not one."""
    if not text.startswith(PREFIX):
        raise DecryptionError("the stored value is not a sealed SecureString")
    try:
        key, version, wrapped, body = text[len(PREFIX) :].split(":")
        return Sealed(key, int(version), _unb64(wrapped), _unb64(body))
    except ValueError:
        raise DecryptionError("the stored SecureString is damaged") from None


class Keyring:
    """The KEK files of one server; thread-safe (rotation may run beside requests)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, object]] = {}

    # --- files ----------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def _load(self, name: str) -> dict[str, object]:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        try:
            data: dict[str, object] = json.loads(self._path(name).read_text())
        except FileNotFoundError:
            raise NotFoundError(f"key {name} does not exist") from None
        except (OSError, ValueError):
            raise DecryptionError(f"key file {self._path(name)} is unreadable") from None
        self._cache[name] = data
        return data

    def _write(self, name: str, data: dict[str, object]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self._path(name).with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._path(name))
        self._cache[name] = data

    def _material(self, name: str, version: int) -> bytes:
        data = self._load(name)
        versions = data.get("versions")
        if not isinstance(versions, dict) or str(version) not in versions:
            raise DecryptionError(f"key {name} has no version {version}")
        return bytes.fromhex(str(versions[str(version)]))

    def _current(self, name: str) -> int:
        return int(str(self._load(name)["current"]))

    # --- management -------------------------------------------------------------

    def create(self, name: str) -> KeyInfo:
        """A new KEK with one version; ConflictError if it exists."""
        name = key_name(name)
        with self._lock:
            if self._path(name).exists():
                raise ConflictError(f"key {name} already exists")
            now = time.time()
            data: dict[str, object] = {
                "name": name,
                "current": 1,
                "versions": {"1": secrets.token_bytes(32).hex()},
                "created_at": now,
                "rotated_at": None,
            }
            self._write(name, data)
            return self._info(name, data)

    def ensure_default(self) -> None:
        """Create the `default` KEK on first use."""
        with self._lock:
            if self._path(DEFAULT_KEY).exists():
                return
        with contextlib.suppress(ConflictError):
            self.create(DEFAULT_KEY)

    def rotate(self, name: str) -> KeyInfo:
        """Add a new current version; old versions stay to open what they wrapped."""
        name = key_name(name)
        with self._lock:
            data = dict(self._load(name))
            versions = dict(data["versions"])  # type: ignore[call-overload]
            new = max(int(v) for v in versions) + 1
            versions[str(new)] = secrets.token_bytes(32).hex()
            data.update(versions=versions, current=new, rotated_at=time.time())
            self._write(name, data)
            return self._info(name, data)

    def info(self, name: str) -> KeyInfo:
        """One KEK's metadata."""
        name = key_name(name)
        with self._lock:
            return self._info(name, self._load(name))

    def list(self) -> list[KeyInfo]:
        """Every KEK, by name."""
        if not self.directory.exists():
            return []
        names = sorted(p.stem for p in self.directory.glob("*.key"))
        with self._lock:
            return [self._info(n, self._load(n)) for n in names]

    @staticmethod
    def _info(name: str, data: dict[str, object]) -> KeyInfo:
        versions = data.get("versions")
        rotated = data.get("rotated_at")
        return KeyInfo(
            name=name,
            current_version=int(str(data["current"])),
            versions=len(versions) if isinstance(versions, dict) else 0,
            created_at=float(str(data.get("created_at") or 0)),
            rotated_at=float(str(rotated)) if rotated is not None else None,
        )

    # --- sealing ------------------------------------------------------------------

    def seal(self, key: str, name: str, plaintext: str) -> str:
        """Encrypt `plaintext` for parameter `name` under KEK `key`'s current version."""
        with self._lock:
            version = self._current(key)
            kek = self._material(key, version)
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(_NONCE)
        body = nonce + AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), _value_aad(name))
        return (
            PREFIX + f"{key}:{version}:{_b64(self._wrap(key, version, kek, data_key))}:{_b64(body)}"
        )

    def open(self, name: str, sealed_text: str) -> str:
        """Decrypt a value sealed for parameter `name`."""
        sealed = parse_sealed(sealed_text)
        with self._lock:
            kek = self._material(sealed.key, sealed.kek_version)
        try:
            nonce, wrapped = sealed.wrapped[:_NONCE], sealed.wrapped[_NONCE:]
            data_key = AESGCM(kek).decrypt(nonce, wrapped, _key_aad(sealed.key, sealed.kek_version))
            nonce, body = sealed.body[:_NONCE], sealed.body[_NONCE:]
            return AESGCM(data_key).decrypt(nonce, body, _value_aad(name)).decode("utf-8")
        except (InvalidTag, ValueError):
            raise DecryptionError("the SecureString could not be decrypted") from None

    def rewrap(self, sealed_text: str) -> str | None:
        """The same value with its data key wrapped under the KEK's current version.

        None when it already is. The sealed value itself is untouched.
        """
        sealed = parse_sealed(sealed_text)
        with self._lock:
            current = self._current(sealed.key)
            if sealed.kek_version == current:
                return None
            old = self._material(sealed.key, sealed.kek_version)
            new = self._material(sealed.key, current)
        try:
            nonce, wrapped = sealed.wrapped[:_NONCE], sealed.wrapped[_NONCE:]
            data_key = AESGCM(old).decrypt(nonce, wrapped, _key_aad(sealed.key, sealed.kek_version))
        except InvalidTag:
            raise DecryptionError("a data key could not be unwrapped") from None
        rewrapped = self._wrap(sealed.key, current, new, data_key)
        return PREFIX + f"{sealed.key}:{current}:{_b64(rewrapped)}:{_b64(sealed.body)}"

    @staticmethod
    def _wrap(key: str, version: int, kek: bytes, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + AESGCM(kek).encrypt(nonce, data_key, _key_aad(key, version))


def _value_aad(name: str) -> bytes:
    return b"corral-parameter:" + name.encode("utf-8")


def _key_aad(key: str, version: int) -> bytes:
    return f"corral-data-key:{key}:{version}".encode()
