"""The Systems Manager wire API in process: protocol errors, authentication, audit, secrets.

Requests are signed with botocore's SigV4 signer (a test dependency) and sent through
httpx to the app, so malformed requests boto3 itself would refuse to send can be
tried too. tests/e2e/test_ssm_wire.py drives a real server with real boto3.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.server.conftest import Api, fast_config, running_app
from tests.server.test_audit import records
from tests.server.test_identity import bearer, make_user

JSON = "application/x-amz-json-1.1"
SECRET_VALUE = "wire-secret-value-4242"


async def credentials(api: Api, token: str | None = None) -> dict[str, Any]:
    """AWS credentials of the admin (or of `token`'s user)."""
    response = await api.client.post(
        "/api/v1/tokens",
        json={"aws_credentials": True, "description": "wire"},
        headers=bearer(token) if token else None,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["access_key_id"].startswith("CRLK")
    assert len(created["access_key_id"]) == 20
    assert "token" not in created
    return created  # type: ignore[no-any-return]


def signed_headers(
    creds: dict[str, Any],
    body: bytes,
    headers: dict[str, str],
    method: str = "POST",
    path: str = "/",
    region: str = "eu-central-1",
    secret: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    request = AWSRequest(method=method, url="http://corral.test" + path, data=body, headers=headers)
    signer = SigV4Auth(
        Credentials(creds["access_key_id"], secret or creds["secret_access_key"]), "ssm", region
    )
    if at is None:
        signer.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=at):
            signer.add_auth(request)
    return dict(request.headers.items())


async def call(
    api: Api,
    creds: dict[str, Any] | None,
    operation: str | None,
    payload: dict[str, object] | bytes,
    *,
    content_type: str = JSON,
    extra: dict[str, str] | None = None,
    secret: str | None = None,
    at: datetime | None = None,
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Content-Type": content_type, **(extra or {})}
    if operation is not None:
        headers["X-Amz-Target"] = operation
    if creds is not None:
        headers = signed_headers(creds, body, headers, secret=secret, at=at)
    # No default bearer token: only what was signed (or given) authenticates.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app), base_url="http://corral.test"
    ) as client:
        return await client.post("/", content=body, headers=headers)


def wire_error(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    assert set(body) == {"__type", "message"}, body
    assert response.headers["content-type"] == JSON
    return response.status_code, body["__type"], body["message"]


async def test_calls_work_and_are_audited_as_the_operation(api: Api) -> None:
    creds = await credentials(api)
    put = await call(
        api,
        creds,
        "AmazonSSM.PutParameter",
        {"Name": "/w/db", "Value": SECRET_VALUE, "Type": "SecureString"},
    )
    assert put.status_code == 200, put.text
    assert put.json() == {"Version": 1, "Tier": "Standard"}
    assert put.headers["x-amzn-requestid"] == put.headers["x-request-id"]
    got = await call(
        api, creds, "AmazonSSM.GetParameter", {"Name": "/w/db", "WithDecryption": True}
    )
    parameter = got.json()["Parameter"]
    assert parameter["Value"] == SECRET_VALUE
    assert parameter["ARN"] == "arn:aws:ssm:eu-central-1:000000000000:parameter/w/db"
    assert isinstance(parameter["LastModifiedDate"], float)
    sealed = await call(api, creds, "AmazonSSM.GetParameter", {"Name": "/w/db"})
    assert sealed.json()["Parameter"]["Value"].startswith("corral:v1:default:")

    every = await records(api)
    found = {r["request_id"]: r for r in every if "status" in r["details"]}  # one per call
    put_record = found[put.headers["x-request-id"]]
    assert put_record["action"] == "parameter:Put"
    assert put_record["details"]["ssm_operation"] == "PutParameter"
    assert put_record["details"]["path"] == "/"
    assert put_record["principal"] == "user:admin"
    assert put_record["token_id"] == creds["token_id"]
    assert put_record["resources"] == ["parameter:/w/db"]
    get_record = found[got.headers["x-request-id"]]
    assert (get_record["action"], get_record["outcome"]) == ("parameter:Get", "allowed")
    decryptions = [
        r
        for r in every
        if r["action"] == "parameter:GetDecrypted" and r["request_id"] == get_record["request_id"]
    ]
    assert [r["resources"] for r in decryptions] == [["parameter:/w/db:1"]]
    export = await api.client.get("/api/v1/audit/export")
    assert SECRET_VALUE not in export.text
    assert creds["secret_access_key"] not in export.text


async def test_a_denied_operation_is_access_denied_and_audited_as_denied(api: Api) -> None:
    await call(
        api,
        await credentials(api),
        "AmazonSSM.PutParameter",
        {"Name": "/w/s", "Value": "v", "Type": "SecureString"},
    )
    viewer = await credentials(api, await make_user(api, "vic", "viewer"))
    readable = await call(api, viewer, "AmazonSSM.GetParameter", {"Name": "/w/s"})
    assert readable.status_code == 200
    denied = await call(
        api, viewer, "AmazonSSM.GetParameter", {"Name": "/w/s", "WithDecryption": True}
    )
    status, code, message = wire_error(denied)
    assert (status, code) == (400, "AccessDeniedException")
    assert "user:vic may not parameter:GetDecrypted on parameter:/w/s" in message
    record = {r["request_id"]: r for r in await records(api)}[denied.headers["x-request-id"]]
    assert (record["action"], record["outcome"]) == ("parameter:Get", "denied")
    assert record["error"].startswith("AccessDeniedException: ")


@pytest.mark.parametrize(
    ("operation", "payload", "content_type", "expected"),
    [
        ("AmazonSSM.SendCommand", {}, JSON, ("UnknownOperationException", "SendCommand")),
        ("AmazonEC2.GetParameter", {}, JSON, ("UnknownOperationException", "AmazonEC2")),
        ("AmazonSSM.GetParameter", {"Name": "/x"}, "text/plain", ("ValidationException", JSON)),
        ("AmazonSSM.GetParameter", b"{not json", JSON, ("SerializationException", "not valid")),
        ("AmazonSSM.GetParameter", b"[1]", JSON, ("SerializationException", "JSON object")),
        (
            "AmazonSSM.GetParameter",
            {"Name": "/x", "Nme": 1},
            JSON,
            ("ValidationException", "Nme is not a member of GetParameter's request"),
        ),
        (
            "AmazonSSM.GetParameter",
            {},
            JSON,
            ("ValidationException", "Value null at 'Name' failed to satisfy constraint"),
        ),
        (
            "AmazonSSM.GetParameter",
            {"Name": "/x", "WithDecryption": "yes"},
            JSON,
            ("ValidationException", "'WithDecryption'"),
        ),
        (
            "AmazonSSM.GetParameters",
            {"Names": [f"/n{i}" for i in range(11)]},
            JSON,
            ("ValidationException", "'Names'"),
        ),
        (
            "AmazonSSM.GetParametersByPath",
            {"Path": "/", "ParameterFilters": [{"Key": "Name", "Values": ["x"]}]},
            JSON,
            ("InvalidFilterKey", "Name is not valid for GetParametersByPath"),
        ),
        (
            "AmazonSSM.GetParametersByPath",
            {"Path": "/", "ParameterFilters": [{"Key": "tag:env", "Values": ["x"]}]},
            JSON,
            ("InvalidFilterKey", "tag:env is not valid for GetParametersByPath"),
        ),
        (
            "AmazonSSM.GetParametersByPath",
            {"Path": "/", "ParameterFilters": [{"Key": "Label", "Values": ["x"]}]},
            JSON,
            ("ValidationException", "the Label filter is not supported by Corral"),
        ),
        (
            "AmazonSSM.DescribeParameters",
            {"ParameterFilters": [{"Key": "Name", "Option": "Recursive", "Values": ["x"]}]},
            JSON,
            ("InvalidFilterOption", "Recursive is not valid for Name"),
        ),
        (
            "AmazonSSM.DescribeParameters",
            {"ParameterFilters": [{"Key": "Name", "Option": "Contains", "Values": ["x"]}]},
            JSON,
            ("ValidationException", "Contains is not supported by Corral"),
        ),
        (
            "AmazonSSM.DescribeParameters",
            {"ParameterFilters": [{"Key": "Type", "Values": ["Secret"]}]},
            JSON,
            ("InvalidFilterValue", "Type values must be among"),
        ),
        (
            "AmazonSSM.DescribeParameters",
            {"Filters": [{"Key": "Name", "Values": ["x"]}], "ParameterFilters": [{"Key": "Type"}]},
            JSON,
            ("ValidationException", "either Filters or ParameterFilters"),
        ),
        (
            "AmazonSSM.DescribeParameters",
            {"NextToken": "A"},
            JSON,
            ("InvalidNextToken", "NextToken"),
        ),
        (
            "AmazonSSM.AddTagsToResource",
            {"ResourceType": "Document", "ResourceId": "d", "Tags": []},
            JSON,
            ("InvalidResourceType", "Parameter only"),
        ),
        (
            "AmazonSSM.ListTagsForResource",
            {"ResourceType": "Parameter", "ResourceId": "/nope"},
            JSON,
            ("InvalidResourceId", "/nope"),
        ),
        (
            "AmazonSSM.PutParameter",
            {"Name": "/x", "Value": "v", "Type": "SecureString", "KeyId": "arn:aws:kms:k"},
            JSON,
            ("InvalidKeyId", "key name"),
        ),
        (
            "AmazonSSM.PutParameter",
            {"Name": "/x", "Value": "v", "Type": "SecureString", "KeyId": "alias/missing"},
            JSON,
            ("InvalidKeyId", "key missing does not exist"),
        ),
        (
            "AmazonSSM.PutParameter",
            {"Name": "/" + "/".join("l" * 16), "Value": "v"},
            JSON,
            ("HierarchyLevelLimitExceededException", "at most 15"),
        ),
    ],
)
async def test_protocol_errors_name_what_is_wrong(
    api: Api,
    operation: str,
    payload: dict[str, object] | bytes,
    content_type: str,
    expected: tuple[str, str],
) -> None:
    creds = await credentials(api)
    response = await call(api, creds, operation, payload, content_type=content_type)
    status, code, message = wire_error(response)
    assert (status, code) == (400, expected[0]), message
    assert expected[1] in message


async def test_without_x_amz_target_it_is_the_native_error_shape(api: Api) -> None:
    response = await api.client.post("/", json={})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "X-Amz-Target"
    anonymous = await call(api, None, None, {})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "AuthError"


async def test_authentication_failures_have_the_aws_codes(api: Api) -> None:
    creds = await credentials(api)
    target = "AmazonSSM.DescribeParameters"
    tampered = await call(api, creds, target, {}, secret="not-the-secret")
    assert wire_error(tampered)[:2] == (400, "InvalidSignatureException")
    unknown = {**creds, "access_key_id": "CRLKAAAAAAAAAAAAAAAA"}
    assert wire_error(await call(api, unknown, target, {}))[1] == "UnrecognizedClientException"
    no_auth = await call(api, None, target, {})
    assert wire_error(no_auth)[1] == "UnrecognizedClientException"
    incomplete = await call(
        api, None, target, {}, extra={"Authorization": "AWS4-HMAC-SHA256 Credential=x"}
    )
    assert wire_error(incomplete)[1] == "IncompleteSignatureException"
    session = await call(api, creds, target, {}, extra={"X-Amz-Security-Token": "t"})
    _status, code, message = wire_error(session)
    assert (code, "AWS_SESSION_TOKEN" in message) == ("UnrecognizedClientException", True)
    stale = await call(api, creds, target, {}, at=datetime(2020, 1, 1))
    assert wire_error(stale)[1] == "InvalidSignatureException"
    assert "Signature expired: 20200101T000000Z" in wire_error(stale)[2]
    by_id = {r["request_id"]: r for r in await records(api)}
    for response in (tampered, no_auth, incomplete, session):
        record = by_id[response.headers["x-request-id"]]
        assert (record["outcome"], record["action"]) == ("denied", "ssm:Call")
        assert record["details"]["ssm_operation"] == "DescribeParameters"
    # Revoking the credentials stops them at once, like a bearer token.
    assert (await call(api, creds, target, {})).status_code == 200
    revoked = await api.client.delete(f"/api/v1/tokens/{creds['token_id']}")
    assert revoked.json()["access_key_id"] == creds["access_key_id"]
    gone = await call(api, creds, target, {})
    assert wire_error(gone)[1:] == (
        "UnrecognizedClientException",
        "the access key is unknown, revoked or expired",
    )


async def test_repeated_failures_are_throttled(tmp_path: Path) -> None:
    async with running_app(fast_config(tmp_path / "data", auth_failure_limit=3)) as api:
        creds = await credentials(api)
        for _ in range(3):
            bad = await call(api, creds, "AmazonSSM.DescribeParameters", {}, secret="wrong")
            assert wire_error(bad)[1] == "InvalidSignatureException"
        locked = await call(api, creds, "AmazonSSM.DescribeParameters", {})
        assert wire_error(locked)[1] == "ThrottlingException"
        assert int(locked.headers["retry-after"]) >= 1


async def test_signatures_also_authenticate_the_native_api_and_tokens_the_wire(api: Api) -> None:
    creds = await credentials(api)
    headers = signed_headers(creds, b"", {}, method="GET", path="/api/v1/whoami")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api.app), base_url="http://corral.test"
    ) as client:
        who = await client.get("/api/v1/whoami", headers=headers)
    assert who.status_code == 200, who.text
    assert (who.json()["principal"], who.json()["token_id"]) == ("user:admin", creds["token_id"])
    listed = (await api.client.get("/api/v1/tokens")).json()
    assert {t["access_key_id"] for t in listed} == {None, creds["access_key_id"]}
    assert all("secret_access_key" not in t for t in listed)
    # A bearer token reaches the wire API too (ARNs then name the default region).
    await api.client.post("/api/v1/parameters", json={"name": "/w/plain", "value": "v"})
    response = await api.client.post(
        "/",
        content=json.dumps({"Name": "/w/plain"}),
        headers={"X-Amz-Target": "AmazonSSM.GetParameter", "Content-Type": JSON},
    )
    assert response.json()["Parameter"]["ARN"].startswith("arn:aws:ssm:us-east-1:000000000000:")


async def test_internal_errors_say_nothing(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = await credentials(api)

    async def broken(*_args: object) -> None:
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(api.app.state.context.params, "get", broken)
    response = await call(api, creds, "AmazonSSM.GetParameter", {"Name": "/x"})
    assert wire_error(response) == (500, "InternalServerError", "internal server error")


async def test_the_secret_access_key_is_stored_sealed(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    creds = await credentials(api)
    used = await call(api, creds, "AmazonSSM.DescribeParameters", {})
    assert used.status_code == 200
    failed = await call(api, creds, "AmazonSSM.DescribeParameters", {}, secret="nope")
    assert failed.status_code == 400
    assert creds["secret_access_key"] not in caplog.text
    database = api.config.sqlite_path
    with sqlite3.connect(database) as conn:
        row = conn.execute(
            "SELECT token_hash, secret_sealed FROM api_tokens WHERE access_key_id = ?",
            (creds["access_key_id"],),
        ).fetchone()
    assert row[0] is None
    assert row[1].startswith("corral:v1:aws-credentials:1:")
    for path in api.config.data_dir.rglob("*"):
        if path.is_file():
            assert creds["secret_access_key"].encode() not in path.read_bytes(), path
    keys = (await api.client.get("/api/v1/keys")).json()
    assert "aws-credentials" in [k["name"] for k in keys]
