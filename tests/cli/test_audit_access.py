"""`corral audit` and `corral access` against a fake API: queries, paging, output, exits."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from corral.cli.audit import parse_time
from corral.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import FakeApi, Result

    Cli = Callable[..., Result]


def record(seq: int, **extra: Any) -> dict[str, Any]:
    """An audit record as the API returns it."""
    return {
        "seq": seq,
        "time": "2026-11-29T16:00:00.000000Z",
        "time_us": 1795968000000000 + seq,
        "request_id": f"r{seq}",
        "principal": "user:alice",
        "token_id": "t1",
        "action": "node:List",
        "resources": [],
        "source": "127.0.0.1",
        "outcome": "allowed",
        "error": None,
        "grant_id": None,
        "details": {"method": "GET", "path": "/api/v1/nodes", "status": 200},
        "hash": f"{seq:064x}",
        **extra,
    }


def paged_audit(total: int) -> Callable[[httpx.Request], httpx.Response]:
    """A fake `GET /api/v1/audit` over records 1..total, newest first, like the server."""

    def handle(request: httpx.Request) -> httpx.Response:
        limit = int(request.url.params.get("limit", "100"))
        before = int(request.url.params.get("before", str(total + 1)))
        seqs = list(range(before - 1, 0, -1))[:limit]
        body = {
            "records": [record(seq) for seq in seqs],
            "next_before": seqs[-1] if len(seqs) == limit else None,
        }
        return httpx.Response(200, json=body)

    return handle


def audit_requests(api: FakeApi, path: str = "/api/v1/audit") -> list[httpx.Request]:
    return [r for r in api.requests if r.url.path == path]


# --- times --------------------------------------------------------------------


def test_parse_time() -> None:
    now = datetime(2026, 11, 29, 16, 0, 0, tzinfo=UTC)
    assert parse_time("1h", "since", now) == "2026-11-29T15:00:00.000000Z"
    assert parse_time("7d", "since", now) == "2026-11-22T16:00:00.000000Z"
    assert parse_time("90", "since", now) == "2026-11-29T15:58:30.000000Z"
    assert parse_time("2026-01-31T12:00:00Z", "since", now) == "2026-01-31T12:00:00.000000Z"
    assert parse_time("2026-01-31T12:00:00", "until", now) == "2026-01-31T12:00:00.000000Z"
    assert parse_time("2026-01-31T14:00:00+02:00", "until", now) == "2026-01-31T12:00:00.000000Z"
    assert parse_time("2026-01-31", "until", now) == "2026-01-31T00:00:00.000000Z"
    with pytest.raises(ValidationError) as raised:
        parse_time("yesterday", "since", now)
    assert raised.value.field == "since"


def test_audit_list_since_1h_is_sent_as_an_iso_time(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/audit", body={"records": [record(1)], "next_before": None})
    before = datetime.now(UTC)
    result = cli("audit", "list", "--since", "1h", "-o", "json")
    after = datetime.now(UTC)
    assert result.exit_code == 0, result.stderr
    since = audit_requests(api)[0].url.params["since"]
    assert since.endswith("Z")
    sent = datetime.fromisoformat(since.replace("Z", "+00:00"))
    assert before - timedelta(hours=1, seconds=1) <= sent <= after - timedelta(hours=1)


def test_audit_list_filters(api: FakeApi, cli: Cli) -> None:
    api.on("GET", "/api/v1/audit", body={"records": [], "next_before": None})
    result = cli(
        "audit", "list", "--since", "2026-01-01T00:00:00Z", "--until", "2026-02-01",
        "--principal", "user:alice", "--action", "command:Send", "--outcome", "denied",
        "--grant", "ar-1", "--limit", "20", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0
    assert result.json() == []
    params = dict(audit_requests(api)[0].url.params)
    assert params == {
        "since": "2026-01-01T00:00:00.000000Z",
        "until": "2026-02-01T00:00:00.000000Z",
        "principal": "user:alice",
        "action": "command:Send",
        "outcome": "denied",
        "grant_id": "ar-1",
        "limit": "20",
    }


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--outcome", "maybe"), "outcome"),
        (("--since", "last tuesday"), "since"),
        (("--until", "soon"), "until"),
    ],
)
def test_audit_list_bad_filters(api: FakeApi, cli: Cli, args: tuple[str, ...], field: str) -> None:
    result = cli("audit", "list", *args, "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == field
    assert api.requests == []
    assert cli("audit", "list", "--limit", "0").exit_code == 2


@pytest.mark.parametrize(
    ("limit", "total", "page_limits", "count"),
    [
        (None, 5000, ["100"], 100),
        ("1500", 5000, ["1000", "500"], 1500),
        ("2500", 2300, ["1000", "1000", "500"], 2300),
        ("1000", 1000, ["1000"], 1000),
        ("1200", 1000, ["1000", "200"], 1000),
        ("5", 3, ["5"], 3),
    ],
)
def test_audit_list_pages_through_next_before(
    api: FakeApi, cli: Cli, limit: str | None, total: int, page_limits: list[str], count: int
) -> None:
    api.routes[("GET", "/api/v1/audit")] = [paged_audit(total)]
    result = cli("audit", "list", *(("--limit", limit) if limit else ()), "-o", "json")
    assert result.exit_code == 0
    records = result.json()
    assert [r["seq"] for r in records] == list(range(total, total - count, -1))
    requests = audit_requests(api)
    assert [r.url.params["limit"] for r in requests] == page_limits
    befores = [r.url.params.get("before") for r in requests]
    assert befores[0] is None
    # Each page continues below the last record of the one before.
    for index in range(1, len(requests)):
        seen = sum(int(r.url.params["limit"]) for r in requests[:index])
        assert befores[index] == str(total - seen + 1)


def test_audit_list_table(api: FakeApi, cli: Cli) -> None:
    denied = record(
        7,
        outcome="denied",
        action="command:Send",
        resources=["document:A", "node:mi-1", "node:mi-2", "node:mi-3"],
        error="AccessDeniedError: user:alice may not command:Send",
        grant_id="ar-1",
    )
    api.on("GET", "/api/v1/audit", body={"records": [denied, record(6)], "next_before": 6})
    result = cli("audit", "list", "--limit", "2")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "SEQ", "TIME", "PRINCIPAL", "ACTION", "OUTCOME", "RESOURCES", "GRANT", "ERROR",
    ]  # fmt: skip
    assert lines[1].split()[:5] == [
        "7",
        "2026-11-29T16:00:00Z",
        "user:alice",
        "command:Send",
        "denied",
    ]
    assert "document:A, node:mi-1, node:mi-2 (+1 more)" in lines[1]
    assert "ar-1" in lines[1]
    assert "AccessDeniedError" in lines[1]
    assert "more may match" in result.stderr


def test_audit_list_access_denied_exits_4(api: FakeApi, cli: Cli) -> None:
    api.fail("GET", "/api/v1/audit", 403, "AccessDeniedError", "user:bob may not audit:Read")
    result = cli("audit", "list", "-o", "json")
    assert result.exit_code == 4
    assert result.stdout == ""
    assert result.error()["type"] == "AccessDeniedError"


# --- verify, checkpoint, export ------------------------------------------------

REPORT: dict[str, Any] = {
    "ok": True,
    "records": 42,
    "head_hash": "ab" * 32,
    "checkpoints": 3,
    "first_bad_seq": None,
    "problem": None,
    "checkpoint_public_key": "cd" * 32,
}


def test_audit_verify_intact(api: FakeApi, cli: Cli) -> None:
    api.on("POST", "/api/v1/audit/verify", body=REPORT)
    result = cli("audit", "verify", "-o", "json")
    assert result.exit_code == 0
    assert result.json() == REPORT
    human = cli("audit", "verify")
    assert human.exit_code == 0
    assert "Result:                intact" in human.stdout
    assert "Records checked:       42" in human.stdout
    assert "Checkpoints:           3" in human.stdout
    assert human.stderr == ""


def test_audit_verify_broken_exits_1_and_names_the_record(api: FakeApi, cli: Cli) -> None:
    broken = {
        **REPORT,
        "ok": False,
        "records": 1,
        "first_bad_seq": 2,
        "problem": "record 2 does not match its hash",
    }
    api.on("POST", "/api/v1/audit/verify", body=broken)
    result = cli("audit", "verify", "-o", "json")
    assert result.exit_code == 1
    assert result.json()["first_bad_seq"] == 2
    human = cli("audit", "verify")
    assert human.exit_code == 1
    assert "First bad record:      2" in human.stdout
    assert "Problem:               record 2 does not match its hash" in human.stdout
    assert "not intact at record 2" in human.stderr


def test_audit_checkpoint(api: FakeApi, cli: Cli) -> None:
    written = {
        "count": 43,
        "head_hash": "ef" * 32,
        "time": "2026-11-29T16:00:00.000000Z",
        "signature": "00" * 64,
        "checkpoint_public_key": "cd" * 32,
    }
    api.on("POST", "/api/v1/audit/checkpoint", body=written)
    assert cli("audit", "checkpoint", "-o", "json").json() == written
    human = cli("audit", "checkpoint").stdout
    assert "Records:               43" in human
    assert f"Head hash:             {'ef' * 32}" in human


def test_audit_export_streams_jsonl_unchanged(api: FakeApi, cli: Cli) -> None:
    body = "".join(
        json.dumps(record(seq, principal="user:émile"), ensure_ascii=False) + "\n"
        for seq in range(1, 4)
    ).encode()
    api.routes[("GET", "/api/v1/audit/export")] = [
        lambda _req: httpx.Response(
            200, content=body, headers={"content-type": "application/x-ndjson"}
        )
    ]
    result = cli("audit", "export", "--since", "2026-01-01", "--outcome", "allowed")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.encode() == body
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [1, 2, 3]
    assert result.stderr == "Exported 3 audit records.\n"
    params = audit_requests(api, "/api/v1/audit/export")[0].url.params
    assert params["since"] == "2026-01-01T00:00:00.000000Z"
    assert params["outcome"] == "allowed"
    as_json = cli("audit", "export", "-o", "json")
    assert as_json.stdout.encode() == body
    assert as_json.stderr == ""


@pytest.mark.parametrize(
    ("status", "exit_code"), [(403, 4), (400, 2), (401, 4), (503, 5), (500, 1)]
)
def test_audit_export_errors(api: FakeApi, cli: Cli, status: int, exit_code: int) -> None:
    api.fail("GET", "/api/v1/audit/export", status, "SomeError", "nope", "since")
    result = cli("audit", "export", "-o", "json")
    assert result.exit_code == exit_code
    assert result.stdout == ""
    assert result.error() == {"type": "SomeError", "message": "nope", "field": "since"}


def test_audit_export_unreachable_exits_5(cli: Cli) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = cli("audit", "export", "-o", "json", "--server", url, server=False)
    assert result.exit_code == 5
    assert url in result.error()["message"]
    assert result.stdout == ""


# --- access -------------------------------------------------------------------

ACCESS: dict[str, Any] = {
    "request_id": "ar-0123456789abcdef",
    "requester": "alice",
    "role": "operator",
    "targets": ["tag:env=dev"],
    "duration_seconds": 3600,
    "reason": "fix the disk",
    "status": "pending",
    "created_at": "2026-11-29T16:00:00.000Z",
    "decided_at": None,
    "decided_by": None,
    "comment": "",
    "expires_at": None,
    "revoked_at": None,
    "revoked_by": None,
}
REQ = "/api/v1/access/requests"
ONE = f"{REQ}/{ACCESS['request_id']}"


def test_access_request(api: FakeApi, cli: Cli) -> None:
    api.on("POST", REQ, 201, ACCESS)
    result = cli(
        "access", "request", "--targets", "tag:env=dev", "--targets", "tag:role=web",
        "--role", "operator", "--duration", "1h", "--reason", "fix the disk", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.json()["request_id"] == ACCESS["request_id"]
    assert result.json()["status"] == "pending"
    assert api.bodies("POST", REQ) == [
        {
            "targets": ["tag:env=dev", "tag:role=web"],
            "role": "operator",
            "duration_seconds": 3600,
            "reason": "fix the disk",
        }
    ]
    human = cli(
        "access", "request", "-t", "all", "--role", "operator", "--duration", "30m",
        "--reason", "x",
    )  # fmt: skip
    assert "Request ID: ar-0123456789abcdef" in human.stdout
    assert "Status:     pending" in human.stdout
    assert "corral access approve ar-0123456789abcdef" in human.stderr
    assert api.bodies("POST", REQ)[-1]["duration_seconds"] == 1800


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--targets", "web-1", "--duration", "1h", "--reason", "r"), "targets"),
        (("--targets", "all", "--duration", "an hour", "--reason", "r"), "duration"),
        (("--targets", "all", "--duration", "1h", "--reason", "  "), "reason"),
    ],
)
def test_access_request_bad_values(
    api: FakeApi, cli: Cli, args: tuple[str, ...], field: str
) -> None:
    result = cli("access", "request", "--role", "operator", *args, "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == field
    assert api.requests == []


def test_access_request_needs_every_option(api: FakeApi, cli: Cli) -> None:
    assert cli("access", "request", "--targets", "all", "--role", "operator").exit_code == 2
    assert api.requests == []


def test_access_list(api: FakeApi, cli: Cli) -> None:
    approved = {
        **ACCESS,
        "request_id": "ar-2",
        "status": "approved",
        "expires_at": "2030-01-01T00:00:00.000Z",
    }
    api.on("GET", REQ, body=[ACCESS, approved])
    result = cli("access", "list", "--status", "pending", "--mine", "-o", "json")
    assert result.exit_code == 0
    assert result.json() == [ACCESS, approved]
    params = api.requests[-1].url.params
    assert (params["status"], params["mine"], params["limit"]) == ("pending", "true", "100")
    table = cli("access", "list")
    assert "status" not in api.requests[-1].url.params
    assert "mine" not in api.requests[-1].url.params
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["REQUEST", "ID", "STATUS"]
    assert lines[1].split()[:6] == [
        "ar-0123456789abcdef", "pending", "alice", "operator", "tag:env=dev", "1h",
    ]  # fmt: skip
    assert "2030-01-01T00:00:00Z (in " in lines[2]


def test_access_list_bad_status(api: FakeApi, cli: Cli) -> None:
    result = cli("access", "list", "--status", "open", "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == "status"
    assert api.requests == []


def test_access_show(api: FakeApi, cli: Cli) -> None:
    api.on("GET", ONE, body=ACCESS)
    assert cli("access", "show", ACCESS["request_id"], "-o", "json").json() == ACCESS
    human = cli("access", "show", ACCESS["request_id"]).stdout
    assert "Reason:     fix the disk" in human
    assert "Duration:   1h" in human
    assert "Decided" not in human
    api.fail("GET", f"{REQ}/ar-none", 404, "NotFoundError", "no such request")
    assert cli("access", "show", "ar-none").exit_code == 3


@pytest.mark.parametrize(
    ("verb", "comment", "status"),
    [("approve", "ok", "approved"), ("deny", None, "denied"), ("deny", "no", "denied")],
)
def test_access_decisions(
    api: FakeApi, cli: Cli, verb: str, comment: str | None, status: str
) -> None:
    decided = {
        **ACCESS,
        "status": status,
        "decided_at": "2026-11-29T16:01:00.000Z",
        "decided_by": "user:bob",
        "comment": comment or "",
    }
    api.on("POST", f"{ONE}/{verb}", body=decided)
    extra = ("--comment", comment) if comment else ()
    result = cli("access", verb, ACCESS["request_id"], *extra, "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["status"] == status
    assert api.bodies("POST", f"{ONE}/{verb}") == [{"comment": comment} if comment else None]
    human = cli("access", verb, ACCESS["request_id"])
    assert f"Status:     {status}" in human.stdout
    assert "Decided by: user:bob" in human.stdout
    assert human.stderr == f"Access request {ACCESS['request_id']}: {status}.\n"


def test_access_approve_denied_exits_4(api: FakeApi, cli: Cli) -> None:
    api.fail(
        "POST",
        f"{ONE}/approve",
        403,
        "AccessDeniedError",
        "you cannot approve or deny your own access request",
    )
    result = cli("access", "approve", ACCESS["request_id"], "-o", "json")
    assert result.exit_code == 4
    assert "your own" in result.error()["message"]


def test_access_revoke(api: FakeApi, cli: Cli) -> None:
    revoked = {**ACCESS, "status": "revoked", "revoked_at": "2026-11-29T16:02:00.000Z"}
    revoked["revoked_by"] = "user:alice"
    api.on("POST", f"{ONE}/revoke", body=revoked)
    result = cli("access", "revoke", ACCESS["request_id"], "-o", "json")
    assert result.json()["status"] == "revoked"
    assert api.bodies("POST", f"{ONE}/revoke") == [None]
    assert "Revoked by: user:alice" in cli("access", "revoke", ACCESS["request_id"]).stdout


def test_access_evidence_is_always_json(api: FakeApi, cli: Cli) -> None:
    evidence = {
        "request": ACCESS,
        "decisions": [],
        "revocation": None,
        "actions": [record(1, grant_id=ACCESS["request_id"])],
        "exported_at": "2026-11-29T16:03:00.000Z",
    }
    api.on("GET", f"{ONE}/evidence", body=evidence)
    for extra in ((), ("-o", "json")):
        result = cli("access", "evidence", ACCESS["request_id"], *extra)
        assert result.exit_code == 0
        assert result.json() == evidence
        assert result.stderr == ""
