"""The server's TLS material: a generated private CA and server certificate, or the operator's.

Rules:
* Generated (no `--tls-cert`): DATA_DIR/tls/ holds ca.crt, ca.key, server.crt and
  server.key (directory 0700, keys 0600, certificates 0644). Every file is written
  to a temporary name, fsynced and renamed, and a key is written before its
  certificate, so a crash leaves either the old pair or a key whose certificate is
  missing or does not match it — both are regenerated on the next start, never
  served. A lock file serialises servers starting on the same directory.
* The CA (ECDSA P-256, ten years) is created once and kept: agents pin its
  fingerprint. The server certificate (ECDSA P-256, two years, serverAuth) is
  reissued by that CA when its names changed, when fewer than 30 days remain, or
  when it no longer matches its key or the CA. A certificate without its key is the
  operator's doing (nothing here writes one without the other) and stops the start.
* Operator-supplied (`--tls-cert`, `--tls-key`, optional `--tls-ca`): checked, never
  written. The published CA is `--tls-ca` (exactly one certificate, which must have
  issued the certificate chain), or else the leaf itself.
* A fingerprint is `sha256:` and 64 lowercase hex digits of the certificate's DER.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corral.errors import ValidationError
from corral.server.config import ServerConfig

logger = logging.getLogger(__name__)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.crt"
SERVER_KEY_FILE = "server.key"
LOCK_FILE = ".lock"

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=730)
RENEW_BEFORE = dt.timedelta(days=30)
# Certificates start an hour in the past so a peer whose clock is a little behind accepts them.
BACKDATE = dt.timedelta(hours=1)

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names, not a bind
_DNS_NAME_RE = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
)

SubjectName = x509.DNSName | x509.IPAddress


@dataclass(frozen=True, slots=True)
class ServerTls:
    """What the server serves: its certificate and key files, and the CA agents pin."""

    cert_file: Path
    key_file: Path
    ca_pem: bytes
    ca_fingerprint: str
    # "generated" (DATA_DIR/tls) or "operator" (--tls-cert/--tls-key).
    source: Literal["generated", "operator"]


def certificate_fingerprint(der: bytes) -> str:
    """`sha256:` + the lowercase hex SHA-256 of a DER certificate."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def pem_fingerprint(pem: bytes) -> str:
    """The fingerprint of the first certificate in `pem`."""
    cert = x509.load_pem_x509_certificate(pem)
    return certificate_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def prepare_server_tls(config: ServerConfig, now: dt.datetime | None = None) -> ServerTls | None:
    """The TLS material for `config`, generated or checked; None when TLS is off.

    Raises ValidationError (naming the flag) for unusable settings or files.
    """
    _check_settings(config)
    if not config.tls_enabled:
        if config.tls_san:
            logger.warning("tls is off; --tls-san is ignored")
        return None
    when = now or dt.datetime.now(dt.UTC)
    if config.tls_cert is not None and config.tls_key is not None:
        return load_operator_tls(config.tls_cert, config.tls_key, config.tls_ca, when)
    names = subject_names(config.host, config.tls_san)
    return ensure_generated_tls(config.tls_dir, names, when)


def _check_settings(config: ServerConfig) -> None:
    if config.tls not in ("auto", "on", "off"):
        raise ValidationError(f"--tls must be auto, on or off, not {config.tls!r}", "tls")
    operator = [config.tls_cert, config.tls_key, config.tls_ca]
    if config.tls == "off" and any(path is not None for path in operator):
        raise ValidationError("--tls-cert/--tls-key/--tls-ca need TLS; drop --tls off", "tls")
    if (config.tls_cert is None) != (config.tls_key is None):
        missing = "--tls-key" if config.tls_key is None else "--tls-cert"
        raise ValidationError(f"--tls-cert and --tls-key go together; {missing} is missing", "tls")
    if config.tls_ca is not None and config.tls_cert is None:
        raise ValidationError("--tls-ca needs --tls-cert and --tls-key", "tls_ca")
    if config.tls_san and config.tls_cert is not None:
        raise ValidationError(
            "--tls-san applies to the generated certificate, not to --tls-cert", "tls_san"
        )


# --- names -----------------------------------------------------------------------------


def parse_subject_name(text: str) -> SubjectName:
    """An IP address or DNS name for a certificate's subjectAltName; ValidationError if neither."""
    value = text.strip()
    with contextlib.suppress(ValueError):
        return x509.IPAddress(ipaddress.ip_address(value.strip("[]")))
    name = value.lower().rstrip(".")
    if not name or len(name) > 253 or not _DNS_NAME_RE.match(name):
        raise ValidationError(
            f"--tls-san must be a DNS name or an IP address, not {text!r}", "tls_san"
        )
    return x509.DNSName(name)


def subject_names(host: str, extra: Sequence[str] = ()) -> list[SubjectName]:
    """The generated certificate's names: loopback, this machine, the listen host, `extra`."""
    wanted: list[SubjectName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    with contextlib.suppress(ValidationError):
        wanted.append(parse_subject_name(socket.gethostname()))
    if host.strip("[]") not in _WILDCARD_HOSTS:
        with contextlib.suppress(ValidationError):
            wanted.append(parse_subject_name(host))
    wanted.extend(parse_subject_name(name) for name in extra)
    unique: list[SubjectName] = []
    for name in wanted:
        if name not in unique:
            unique.append(name)
    return unique


def _names_of(cert: x509.Certificate) -> set[SubjectName]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {name for name in san if isinstance(name, x509.DNSName | x509.IPAddress)}


# --- generated material ------------------------------------------------------------


def ensure_generated_tls(
    tls_dir: Path, names: Sequence[SubjectName], now: dt.datetime
) -> ServerTls:
    """Create or reuse the CA and server certificate in `tls_dir` (see the module rules)."""
    tls_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tls_dir.mkdir(exist_ok=True, mode=0o700)
    os.chmod(tls_dir, 0o700)
    with _locked(tls_dir / LOCK_FILE):
        ca_cert, ca_key = _ensure_ca(tls_dir, now)
        _ensure_server_cert(tls_dir, ca_cert, ca_key, names, now)
    ca_der = ca_cert.public_bytes(serialization.Encoding.DER)
    return ServerTls(
        cert_file=tls_dir / SERVER_CERT_FILE,
        key_file=tls_dir / SERVER_KEY_FILE,
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        ca_fingerprint=certificate_fingerprint(ca_der),
        source="generated",
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_ca(
    tls_dir: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = tls_dir / CA_CERT_FILE, tls_dir / CA_KEY_FILE
    if cert_path.exists():
        if not key_path.exists():
            raise ValidationError(
                f"{cert_path} exists but {key_path.name} is missing: restore it, or remove "
                f"{cert_path.name} to create a new CA (every agent must then be registered again)",
                "tls",
            )
        cert = _read_cert(cert_path)
        key = _read_generated_key(key_path)
        if not _same_public_key(cert, key):
            raise ValidationError(
                f"{cert_path} does not match {key_path.name}: restore the pair, or remove both "
                "to create a new CA (every agent must then be registered again)",
                "tls",
            )
        if cert.not_valid_after_utc <= now:
            raise ValidationError(
                f"the CA in {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}; remove "
                f"{cert_path.name} and {key_path.name} to create a new one, then register "
                "every agent again",
                "tls",
            )
        return cert, key
    # No certificate: a first start, or a crash after the key was written. Start over.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Corral CA {os.urandom(4).hex()}"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomically(key_path, _key_pem(key), 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    logger.info("tls CA created path=%s", cert_path)
    return cert, key


def _ensure_server_cert(
    tls_dir: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[SubjectName],
    now: dt.datetime,
) -> None:
    cert_path, key_path = tls_dir / SERVER_CERT_FILE, tls_dir / SERVER_KEY_FILE
    reason = _reissue_reason(cert_path, key_path, ca_cert, names, now)
    if reason is None:
        return
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Corral server"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomically(key_path, _key_pem(key), 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    logger.info(
        "tls server certificate issued reason=%s names=%s not_after=%s",
        reason,
        ",".join(str(n.value) for n in names),
        cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _reissue_reason(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    names: Sequence[SubjectName],
    now: dt.datetime,
) -> str | None:
    """Why the server certificate must be issued again, or None to keep it."""
    if not cert_path.exists() and not key_path.exists():
        return "first start"
    if not key_path.exists():
        raise ValidationError(
            f"{cert_path} exists but {key_path.name} is missing: restore it, or remove "
            f"{cert_path.name} to issue a new server certificate",
            "tls",
        )
    if not cert_path.exists():
        return "certificate missing"
    try:
        cert = _read_cert(cert_path)
        key = _read_generated_key(key_path)
    except ValidationError:
        return "unreadable"
    if not _same_public_key(cert, key):
        return "key changed"
    if not _issued_by(cert, ca_cert):
        return "CA changed"
    if _names_of(cert) != set(names):
        return "names changed"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return "expiring"
    return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", "tls") from exc
    except ValueError as exc:
        raise ValidationError(f"{path} is not a PEM certificate", "tls") from exc


def _read_generated_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = _read_key(path, "tls")
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValidationError(f"{path} is not an ECDSA key", "tls")
    return key


def _read_key(path: Path, field: str) -> PrivateKeyTypes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {path}: {exc.strerror}", field) from exc
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise ValidationError(
            f"{path} is encrypted; give an unencrypted key (keep it mode 0600)", field
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValidationError(f"{path} is not a PEM private key", field) from exc


def _same_public_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


# --- operator-supplied material ------------------------------------------------------


def load_operator_tls(
    cert_file: Path, key_file: Path, ca_file: Path | None, now: dt.datetime
) -> ServerTls:
    """Check `--tls-cert`, `--tls-key` and `--tls-ca`; ValidationError naming the flag if bad."""
    chain = _read_certs(cert_file, "tls_cert", "--tls-cert")
    leaf = chain[0]
    key = _read_key(key_file, "tls_key")
    if not _same_public_key(leaf, key):
        raise ValidationError(
            f"--tls-key {key_file} is not the key of the certificate in --tls-cert {cert_file}",
            "tls_key",
        )
    published = leaf
    if ca_file is not None:
        cas = _read_certs(ca_file, "tls_ca", "--tls-ca")
        if len(cas) != 1:
            raise ValidationError(
                f"--tls-ca {ca_file} must hold exactly one certificate (the CA agents pin), "
                f"not {len(cas)}; put intermediates in --tls-cert after the server certificate",
                "tls_ca",
            )
        published = cas[0]
        if published not in chain and not any(_issued_by(c, published) for c in chain):
            raise ValidationError(
                f"--tls-cert {cert_file} was not issued by --tls-ca {ca_file}; agents pinning "
                "that CA would refuse the server",
                "tls_ca",
            )
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ValidationError(
            f"--tls-cert {cert_file} and --tls-key {key_file} cannot be served: {exc}", "tls_cert"
        ) from exc
    if leaf.not_valid_after_utc <= now:
        logger.warning("tls --tls-cert has expired not_after=%s", leaf.not_valid_after_utc)
    elif leaf.not_valid_after_utc - now < RENEW_BEFORE:
        logger.warning("tls --tls-cert expires soon not_after=%s", leaf.not_valid_after_utc)
    return ServerTls(
        cert_file=cert_file,
        key_file=key_file,
        ca_pem=published.public_bytes(serialization.Encoding.PEM),
        ca_fingerprint=certificate_fingerprint(published.public_bytes(serialization.Encoding.DER)),
        source="operator",
    )


def _read_certs(path: Path, field: str, flag: str) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {flag} {path}: {exc.strerror}", field) from exc
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValidationError(f"{flag} {path} holds no PEM certificate", field) from exc
    return certs
