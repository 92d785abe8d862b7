"""SigV4 verification as pure code: requests signed by botocore's signer verify; any change fails.

botocore is a test dependency only: it is the independent implementation the server's
verifier is checked against (the server never imports it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from corral.server import sigv4
from corral.server.sigv4 import IncompleteSignatureError, SignatureError, SignedRequest

AKID = "CRLKABCDEFGHIJKLMNOP"
SECRET = "wJalrXUtnFEMI-K7MDENG_bPxRfiCYEXAMPLEKEY"
NOW = 1_795_980_601.0  # 2026-11-29T19:30:01Z


def signed(
    method: str = "POST",
    url: str = "http://127.0.0.1:8443/",
    body: bytes = b'{"Name": "/app/url"}',
    headers: dict[str, str] | None = None,
    *,
    secret: str = SECRET,
    service: str = "ssm",
    region: str = "eu-west-1",
    at: float = NOW,
) -> tuple[sigv4.Authorization, SignedRequest]:
    """A request signed by botocore, as the server would receive it."""
    request = AWSRequest(
        method=method,
        url=url,
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "AmazonSSM.GetParameter",
            **(headers or {}),
        },
    )
    signer = SigV4Auth(Credentials(AKID, secret), service, region)
    moment = datetime.fromtimestamp(at, tz=UTC).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=moment):
        signer.add_auth(request)
    parts = urlsplit(request.url)
    received = [(k.lower(), v) for k, v in request.headers.items()]
    if not any(k == "host" for k, _ in received):
        received.append(("host", parts.netloc))
    scheme, _, credentials = request.headers["Authorization"].partition(" ")
    assert scheme == sigv4.ALGORITHM
    return sigv4.parse_authorization(credentials), SignedRequest(
        method, parts.path or "/", parts.query, received, body
    )


def verify(auth: sigv4.Authorization, request: SignedRequest, secret: str = SECRET) -> None:
    amz_date = sigv4.check_request(auth, request, "ssm", NOW, 300)
    sigv4.verify(secret, auth, request, amz_date)


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("POST", "http://127.0.0.1:8443/", b'{"Name": "/app/url", "WithDecryption": true}'),
        ("POST", "https://corral.example/", b"{}"),
        ("POST", "http://127.0.0.1:8443/", b""),
        ("GET", "http://127.0.0.1:8443/api/v1/whoami", b""),
        (
            "GET",
            "http://corral.test/api/v1/parameters?path=%2Fapp&recursive=true&max_results=5",
            b"",
        ),
        ("GET", "http://corral.test/a/./b/../c//d%20e/", b""),
        ("POST", "http://corral.test/", json.dumps({"Value": "é ünïcödé ✓"}).encode()),
    ],
)
def test_what_botocore_signs_verifies(method: str, url: str, body: bytes) -> None:
    auth, request = signed(method, url, body)
    verify(auth, request)
    assert (auth.access_key_id, auth.region, auth.service) == (AKID, "eu-west-1", "ssm")


def test_the_published_get_vanilla_vector() -> None:
    """AWS's SigV4 test suite, `get-vanilla` (an independent check of the HMAC chain)."""
    auth = sigv4.parse_authorization(
        "Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )
    request = SignedRequest(
        "GET", "/", "", [("host", "example.amazonaws.com"), ("x-amz-date", "20150830T123600Z")], b""
    )
    sigv4.verify("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", auth, request, "20150830T123600Z")


def _tampered(request: SignedRequest, **changes: object) -> SignedRequest:
    return replace(request, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [
        {"body": b'{"Name": "/app/other"}'},
        {"method": "PUT"},
        {"raw_path": "/api"},
        {"query": "x=1"},
    ],
    ids=["body", "method", "path", "query"],
)
def test_any_change_to_what_was_signed_fails(change: dict[str, object]) -> None:
    auth, request = signed()
    with pytest.raises(SignatureError, match="does not match"):
        verify(auth, _tampered(request, **change))


def test_a_changed_signed_header_a_wrong_secret_or_signature_fail() -> None:
    auth, request = signed()
    headers = [
        (k, "AmazonSSM.DeleteParameter" if k == "x-amz-target" else v) for k, v in request.headers
    ]
    with pytest.raises(SignatureError):
        verify(auth, _tampered(request, headers=headers))
    with pytest.raises(SignatureError):
        verify(auth, request, secret=SECRET + "x")
    flipped = auth.signature[:-1] + ("0" if auth.signature[-1] != "0" else "1")
    with pytest.raises(SignatureError):
        verify(replace(auth, signature=flipped), request)
    # Unsigned headers may change (a proxy adding one does no harm).
    verify(auth, _tampered(request, headers=[*request.headers, ("x-forwarded-for", "10.0.0.1")]))


def test_scope_time_and_service_are_checked() -> None:
    auth, request = signed(service="s3")
    with pytest.raises(SignatureError, match="scoped to the service 'ssm'"):
        verify(auth, request)
    auth, request = signed(at=NOW - 301)
    with pytest.raises(SignatureError, match="Signature expired"):
        verify(auth, request)
    auth, request = signed(at=NOW + 299)
    verify(auth, request)
    auth, request = signed()
    with pytest.raises(SignatureError, match="date does not match"):
        verify(replace(auth, date="20200101"), request)
    auth, request = signed(region="ap-southeast-2")  # any region
    verify(auth, request)


def test_the_body_hash_header_must_match_the_body() -> None:
    body = b'{"Name": "/x"}'
    good = hashlib.sha256(body).hexdigest()
    auth, request = signed(body=body, headers={"X-Amz-Content-SHA256": good})
    verify(auth, request)
    auth, request = signed(body=body, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    with pytest.raises(SignatureError, match="unsigned payloads are not accepted"):
        verify(auth, request)


GOOD = (
    f"Credential={AKID}/20261129/us-east-1/ssm/aws4_request, "
    "SignedHeaders=host;x-amz-date, Signature=" + "a" * 64
)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Credential=x",
        GOOD + ", Signature=" + "b" * 64,
        GOOD.replace("aws4_request", "aws5_request"),
        GOOD.replace(f"{AKID}/", "not-alnum!/"),
        GOOD.replace("20261129", "2026-11-29"),
        GOOD.replace("us-east-1", "US EAST"),
        GOOD.replace("host;x-amz-date", "x-amz-date;host"),
        GOOD.replace("host;x-amz-date", "Host;x-amz-date"),
        GOOD.replace("a" * 64, "A" * 64),
        GOOD.replace("a" * 64, "a" * 63),
        "x" * 5000,
    ],
)
def test_malformed_authorization_is_incomplete(header: str) -> None:
    with pytest.raises(IncompleteSignatureError):
        sigv4.parse_authorization(header)


def test_host_and_date_must_be_signed_and_present() -> None:
    request = SignedRequest(
        "POST", "/", "", [("host", "h"), ("x-amz-date", "20261129T193001Z")], b""
    )
    for signed_headers, problem in [
        ("x-amz-date", "host header must be signed"),
        ("host", "x-amz-date header must be signed"),
        ("host;x-amz-date;x-amz-target", "x-amz-target is missing"),
    ]:
        auth = sigv4.parse_authorization(GOOD.replace("host;x-amz-date", signed_headers))
        with pytest.raises(IncompleteSignatureError, match=problem):
            sigv4.check_request(auth, request, "ssm", NOW, 300)
    bad_date = replace(request, headers=[("host", "h"), ("x-amz-date", "yesterday")])
    with pytest.raises(IncompleteSignatureError, match="X-Amz-Date"):
        sigv4.check_request(sigv4.parse_authorization(GOOD), bad_date, "ssm", NOW, 300)
