"""How the agent trusts its server's TLS certificate (stdlib `ssl`, `hashlib` and `hmac` only).

Three modes, chosen at registration and recorded in identity.json as `trust`:
* `pinned` (`register --ca-fingerprint sha256:...`): the server's CA certificate is
  fetched from /ca.pem *without* verification, its SHA-256 is compared with the
  pinned value (constant time), and only then is it stored as STATE_DIR/ca.pem and
  used as the one trust anchor of every later connection. Host names are not
  checked: the anchor is a CA private to this server (Corral generates one per
  server and it signs nothing else; with operator certificates it is the CA the
  operator chose to publish, or the server's own certificate), so any certificate
  that chains to it is the server's, whatever name the agent dials. That keeps
  agents working when they reach the server by an address its certificate does not
  list (NAT, a DNS alias, a load balancer). A CA shared with other hosts (a company
  CA) must not be pinned: give agents `--ca-file` instead, which checks host names.
* `ca_file` (`register --ca-file FILE`): FILE is copied to STATE_DIR/ca.pem and used
  as the trust store, with host names checked as usual.
* `system`: the system trust store, host names checked.
`agent run --ca-file FILE` (or CORRAL_AGENT_CA_FILE) overrides the stored mode with
`ca_file` for that run. Plain http:// servers use no TLS at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from corral.errors import NotFoundError, UnavailableError, ValidationError

TRUST_PINNED = "pinned"
TRUST_CA_FILE = "ca_file"
TRUST_SYSTEM = "system"
TRUST_MODES = (TRUST_PINNED, TRUST_CA_FILE, TRUST_SYSTEM)
CA_FILE = "ca.pem"
CA_PATH = "/ca.pem"
# A CA certificate is a few KiB; anything much bigger is not one.
_MAX_CA_BYTES = 64 * 1024
_FINGERPRINT_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class ServerTrust:
    """Which certificates the agent accepts from its server."""

    mode: str
    # PEM of the trusted CA (pinned and ca_file modes).
    ca_pem: str | None = None
    # Where ca_pem came from, for messages.
    source: str = ""

    def context(self) -> ssl.SSLContext:
        """A client TLS context enforcing this trust."""
        if self.mode == TRUST_SYSTEM or self.ca_pem is None:
            return ssl.create_default_context()
        context = ssl.create_default_context(cadata=self.ca_pem)
        if self.mode == TRUST_PINNED:
            # See the module docstring for why the host name is not checked.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_REQUIRED
            # The pinned certificate is the trust anchor even when it is not self-signed.
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        return context

    def describe(self) -> str:
        """What the server's certificate is checked against, for log and error messages."""
        if self.mode == TRUST_PINNED and self.ca_pem is not None:
            return f"the pinned CA {pem_fingerprint(self.ca_pem)}"
        if self.mode == TRUST_CA_FILE:
            return f"the CA file {self.source}" if self.source else "the CA file"
        return "the system trust store"


SYSTEM_TRUST = ServerTrust(TRUST_SYSTEM)


def parse_fingerprint(text: str) -> str:
    """`sha256:` + 64 hex digits (any case, byte colons allowed) in canonical form."""
    value = text.strip().lower()
    algorithm, sep, digits = value.partition(":")
    canonical = f"{algorithm}:{digits.replace(':', '')}" if sep else value
    if not _FINGERPRINT_RE.match(canonical):
        raise ValidationError(
            f"--ca-fingerprint must be sha256: followed by 64 hex digits, not {text!r}",
            "ca_fingerprint",
        )
    return canonical


def certificate_fingerprint(der: bytes) -> str:
    """`sha256:` + the lowercase hex SHA-256 of a DER certificate."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def single_certificate_der(pem: str, source: str) -> bytes:
    """The DER of the one certificate in `pem`; ValidationError if there is not exactly one."""
    count = pem.count(_PEM_BEGIN)
    if count != 1:
        raise ValidationError(f"{source} must hold exactly one PEM certificate, not {count}")
    start = pem.index(_PEM_BEGIN)
    end_marker = "-----END CERTIFICATE-----"
    end = pem.find(end_marker, start)
    if end < 0:
        raise ValidationError(f"{source} holds a truncated PEM certificate")
    try:
        return ssl.PEM_cert_to_DER_cert(pem[start : end + len(end_marker)])
    except ValueError as exc:
        raise ValidationError(f"{source} holds a damaged PEM certificate") from exc


def pem_fingerprint(pem: str) -> str:
    """The fingerprint of the one certificate in `pem`."""
    return certificate_fingerprint(single_certificate_der(pem, "the CA certificate"))


def fingerprints_match(expected: str, actual: str) -> bool:
    """Constant-time comparison of two canonical fingerprints."""
    return hmac.compare_digest(expected.encode("ascii"), actual.encode("ascii"))


def trust_from_ca_file(path: Path) -> ServerTrust:
    """`ca_file` trust from a PEM bundle; ValidationError when it is unusable."""
    try:
        pem = path.read_text("ascii")
    except OSError as exc:
        raise ValidationError(f"cannot read --ca-file {path}: {exc.strerror}", "ca_file") from exc
    except UnicodeDecodeError as exc:
        raise ValidationError(f"--ca-file {path} is not a PEM file", "ca_file") from exc
    trust = ServerTrust(TRUST_CA_FILE, pem, str(path))
    try:
        trust.context()
    except ssl.SSLError as exc:
        raise ValidationError(
            f"--ca-file {path} holds no usable PEM CA certificate", "ca_file"
        ) from exc
    return trust


def fetch_pinned_ca(server_url: str, fingerprint: str, timeout: float) -> ServerTrust:
    """Fetch the server's CA from /ca.pem and keep it only if its SHA-256 is `fingerprint`.

    The download is not verified (there is nothing to verify it with yet); the
    fingerprint check is what makes it trustworthy.
    """
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # the fingerprint below is the check
    url = server_url.rstrip("/") + CA_PATH
    request = urllib.request.Request(url, headers={"Accept": "application/x-pem-file"})  # noqa: S310 - https checked by the caller
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=unverified) as response:  # noqa: S310
            raw = response.read(_MAX_CA_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise NotFoundError(
                f"{server_url} publishes no CA certificate (/ca.pem answered 404): "
                "is TLS on for this Corral server?"
            ) from None
        raise UnavailableError(f"fetching {url} failed: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnavailableError(f"cannot reach the server: {reason}") from None
    if len(raw) > _MAX_CA_BYTES:
        raise UnavailableError(f"{url} is too large to be a CA certificate")
    try:
        pem = raw.decode("ascii")
    except UnicodeDecodeError:
        raise UnavailableError(f"{url} is not a PEM certificate") from None
    actual = certificate_fingerprint(single_certificate_der(pem, url))
    if not fingerprints_match(fingerprint, actual):
        raise UnavailableError(
            f"the server's CA certificate does not match the pinned fingerprint: expected "
            f"{fingerprint}, the server at {server_url} presented {actual}; refusing to register "
            "(check --ca-fingerprint against `corral activation create`, or someone is "
            "intercepting the connection)"
        )
    return ServerTrust(TRUST_PINNED, pem, url)


def certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `exc` (urllib wraps it), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
        else:
            current = current.__cause__ or current.__context__
    return None


def untrusted_message(
    server_url: str, trust: ServerTrust, error: ssl.SSLCertVerificationError
) -> str:
    """Why the server's certificate was refused, and what to do about it."""
    reason = error.verify_message or "verification failed"
    return (
        f"the TLS certificate of {server_url} could not be verified against "
        f"{trust.describe()} ({reason})"
    )
