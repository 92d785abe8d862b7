"""AWS Signature Version 4, the server's side (sans-I/O): parse, canonicalise, verify.

AWS tools (boto3, the AWS CLI, Terraform) sign each request with a secret access
key; the server recomputes the signature from the request as received and compares
in constant time. Only the header form is accepted:

    Authorization: AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/REGION/SERVICE/aws4_request,
                   SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=<64 hex>
    X-Amz-Date: YYYYMMDDTHHMMSSZ

Rules (from the SigV4 specification, as botocore signs):

* canonical request = method, canonical URI, canonical query, canonical headers,
  signed header names, payload hash — joined by newlines;
* canonical URI = the path as sent, with dot segments and empty segments removed,
  percent-encoded once more (every character but unreserved ones, `/` and `~`);
* canonical query = each `name=value` decoded, re-encoded (unreserved characters
  only), sorted;
* canonical headers = each signed header `name:value` with runs of whitespace
  collapsed, several values of one name joined by `,`;
* payload hash = hex SHA-256 of the body as received (an `X-Amz-Content-SHA256`
  header, when sent, must equal it: unsigned payloads are refused);
* string to sign = `AWS4-HMAC-SHA256`, the X-Amz-Date, the credential scope and the
  hex SHA-256 of the canonical request;
* signing key = HMAC chain `"AWS4"+secret` → date → region → service → `aws4_request`.

`host` and `x-amz-date` must be signed, the scope's date must be the X-Amz-Date's,
the scope's service must be the expected one (any region is accepted), and the
X-Amz-Date must be within the allowed clock skew. Presigned URLs (signature in the
query string) and session tokens are not supported.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

from corral.errors import AuthError

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_HEADER_CHARS = 4096

_AUTH_PART = re.compile(r"^(Credential|SignedHeaders|Signature)=(\S*)$")
_ACCESS_KEY_ID = re.compile(r"^[A-Za-z0-9]{1,128}$")
_SCOPE_DATE = re.compile(r"^[0-9]{8}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SERVICE = re.compile(r"^[a-z0-9-]{1,63}$")
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
_SIGNATURE = re.compile(r"^[0-9a-f]{64}$")


class SignatureError(AuthError):
    """The request's signature does not verify (Systems Manager: InvalidSignatureException)."""


class IncompleteSignatureError(SignatureError):
    """The Authorization header or the signed request is malformed or incomplete."""


class UnrecognizedClientError(AuthError):
    """The access key is unknown, revoked, expired, or its user disabled or deleted."""


@dataclass(frozen=True, slots=True)
class Authorization:
    """A parsed `AWS4-HMAC-SHA256` Authorization header."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        """`DATE/REGION/SERVICE/aws4_request`."""
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a signature covers, as the server received it."""

    method: str
    raw_path: str  # percent-encoded, as sent, without the query
    query: str  # as sent, without the `?`
    headers: Sequence[tuple[str, str]]  # (lowercase name, value) in the order received
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (lowercase), in order."""
        return [value for key, value in self.headers if key == name]


def parse_authorization(credentials: str) -> Authorization:
    """Parse what follows `AWS4-HMAC-SHA256 ` in the Authorization header."""
    if len(credentials) > MAX_HEADER_CHARS:
        raise IncompleteSignatureError("the Authorization header is too long")
    parts: dict[str, str] = {}
    for raw in credentials.split(","):
        match = _AUTH_PART.match(raw.strip())
        if match is None or match.group(1) in parts:
            raise IncompleteSignatureError(
                "the Authorization header must have exactly Credential=..., "
                "SignedHeaders=... and Signature=..."
            )
        parts[match.group(1)] = match.group(2)
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        raise IncompleteSignatureError(
            "the Authorization header must have Credential, SignedHeaders and Signature"
        )
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != TERMINATOR:
        raise IncompleteSignatureError(
            "Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request"
        )
    access_key_id, date, region, service, _ = scope
    if not _ACCESS_KEY_ID.match(access_key_id):
        raise IncompleteSignatureError("the Credential's access key id is malformed")
    if not _SCOPE_DATE.match(date) or not _REGION.match(region) or not _SERVICE.match(service):
        raise IncompleteSignatureError("the Credential's date, region or service is malformed")
    signed = tuple(parts["SignedHeaders"].split(";"))
    if not all(_HEADER_NAME.match(name) for name in signed) or list(signed) != sorted(set(signed)):
        raise IncompleteSignatureError(
            "SignedHeaders must be lowercase header names, sorted, separated by ';'"
        )
    if not _SIGNATURE.match(parts["Signature"]):
        raise IncompleteSignatureError("Signature must be 64 lowercase hex characters")
    return Authorization(access_key_id, date, region, service, signed, parts["Signature"])


def parse_amz_date(text: str) -> float:
    """Epoch seconds of an X-Amz-Date (`20260101T120000Z`)."""
    try:
        return datetime.strptime(text, DATE_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise IncompleteSignatureError(
            "X-Amz-Date must be an ISO 8601 basic time such as 20260101T120000Z"
        ) from None


def check_request(
    auth: Authorization,
    request: SignedRequest,
    service: str,
    now: float,
    max_skew_seconds: float,
) -> str:
    """Everything that can be checked without the secret; returns the X-Amz-Date."""
    if "host" not in auth.signed_headers:
        raise IncompleteSignatureError("the host header must be signed")
    if "x-amz-date" not in auth.signed_headers:
        raise IncompleteSignatureError("the x-amz-date header must be signed")
    for name in auth.signed_headers:
        if not request.header_values(name):
            raise IncompleteSignatureError(f"signed header {name} is missing from the request")
    dates = request.header_values("x-amz-date")
    if len(dates) != 1:
        raise IncompleteSignatureError("exactly one X-Amz-Date header is required")
    amz_date = dates[0].strip()
    signed_at = parse_amz_date(amz_date)
    if auth.service != service:
        raise SignatureError(f"the Credential should be scoped to the service {service!r}")
    if auth.date != amz_date[:8]:
        raise SignatureError("the Credential's date does not match the X-Amz-Date")
    if abs(now - signed_at) > max_skew_seconds:
        server_time = datetime.fromtimestamp(now, tz=UTC).strftime(DATE_FORMAT)
        raise SignatureError(
            f"Signature expired: {amz_date} is more than {round(max_skew_seconds)} s away from "
            f"the server's time {server_time}; check the client's clock"
        )
    return amz_date


def payload_hash(request: SignedRequest) -> str:
    """The body's hex SHA-256 (a differing X-Amz-Content-SHA256 header is refused)."""
    digest = hashlib.sha256(request.body).hexdigest()
    for claimed in request.header_values("x-amz-content-sha256"):
        if claimed.strip() != digest:
            raise SignatureError(
                "X-Amz-Content-SHA256 does not match the body (unsigned payloads are not accepted)"
            )
    return digest


def canonical_uri(raw_path: str) -> str:
    """The path with dot and empty segments removed, percent-encoded again."""
    segments: list[str] = []
    for segment in raw_path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and segments:
        path += "/"
    return quote(path, safe="/~")


def canonical_query(query: str) -> str:
    """`name=value` pairs decoded, re-encoded with unreserved characters only, sorted."""
    pairs = []
    for item in query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        pairs.append(
            (quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")),
        )
    return "&".join(f"{name}={value}" for name, value in sorted(pairs))


def canonical_request(request: SignedRequest, signed_headers: Sequence[str]) -> str:
    """The canonical request of `request` over `signed_headers` (sorted, lowercase)."""
    lines = [
        f"{name}:{','.join(' '.join(v.split()) for v in request.header_values(name))}"
        for name in signed_headers
    ]
    return "\n".join(
        [
            request.method.upper(),
            canonical_uri(request.raw_path),
            canonical_query(request.query),
            "\n".join(lines) + "\n",
            ";".join(signed_headers),
            payload_hash(request),
        ]
    )


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    """What the signing key signs."""
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The derived key for one day, region and service."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(secret: str, auth: Authorization, request: SignedRequest, amz_date: str) -> str:
    """The signature `request` should carry, as lowercase hex."""
    to_sign = string_to_sign(amz_date, auth.scope, canonical_request(request, auth.signed_headers))
    key = signing_key(secret, auth.date, auth.region, auth.service)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(secret: str, auth: Authorization, request: SignedRequest, amz_date: str) -> None:
    """SignatureError unless `auth.signature` is right (compared in constant time)."""
    expected = signature(secret, auth, request, amz_date)
    if not hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("ascii")):
        raise SignatureError(
            "the request signature does not match the signature computed with the secret "
            "access key; check the key and the signing method"
        )
