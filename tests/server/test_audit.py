"""The audit log through the API: every call recorded, tampering found, secrets absent."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from corral.errors import ValidationError
from tests.server.conftest import Api, fast_config, running_app
from tests.server.test_identity import bearer, make_user


async def records(api: Api, **params: str) -> list[dict[str, object]]:
    response = await api.client.get("/api/v1/audit", params={"limit": "1000", **params})
    assert response.status_code == 200, response.text
    return response.json()["records"]  # type: ignore[no-any-return]


async def test_every_call_allowed_or_denied_is_recorded(api: Api) -> None:
    token = await make_user(api, "vera", "viewer")
    listed = await api.client.get("/api/v1/nodes", headers=bearer(token))
    denied = await api.client.post("/api/v1/activations", json={}, headers=bearer(token))
    anonymous = await api.client.get("/api/v1/nodes", headers={"Authorization": ""})
    missing = await api.client.get("/api/v1/documents/nope")
    assert (listed.status_code, denied.status_code, anonymous.status_code) == (200, 403, 401)
    assert missing.status_code == 404
    found = await records(api)
    by_request = {r["request_id"]: r for r in found}
    mine = by_request[listed.headers["x-request-id"]]
    assert (mine["principal"], mine["action"], mine["outcome"]) == (
        "user:vera",
        "node:List",
        "allowed",
    )
    assert mine["source"] == "127.0.0.1"
    assert mine["token_id"]
    assert mine["details"]["path"] == "/api/v1/nodes"
    assert mine["time"].endswith("Z")
    no = by_request[denied.headers["x-request-id"]]
    assert (no["action"], no["outcome"], no["resources"]) == (
        "activation:Create",
        "denied",
        ["activation:*"],
    )
    assert "may not activation:Create" in str(no["error"])
    anon = by_request[anonymous.headers["x-request-id"]]
    assert (anon["principal"], anon["outcome"]) == ("anonymous", "denied")
    failed = by_request[missing.headers["x-request-id"]]
    assert (failed["action"], failed["outcome"]) == ("document:Read", "failed")
    assert failed["resources"] == ["document:nope"]
    # Filters and paging.
    assert {r["outcome"] for r in await records(api, outcome="denied")} == {"denied"}
    assert {r["principal"] for r in await records(api, principal="vera")} == {"user:vera"}
    page = (await api.client.get("/api/v1/audit", params={"limit": "2"})).json()
    assert len(page["records"]) == 2
    assert page["next_before"] == page["records"][1]["seq"]
    older = (
        await api.client.get("/api/v1/audit", params={"limit": "2", "before": page["next_before"]})
    ).json()
    assert older["records"][0]["seq"] == page["next_before"] - 1
    bad = await api.client.get("/api/v1/audit", params={"outcome": "maybe"})
    assert bad.status_code == 400
    assert bad.json()["error"]["field"] == "outcome"
    # The export is JSONL, oldest first, with hashes.
    export = await api.client.get("/api/v1/audit/export")
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [r["seq"] for r in lines] == list(range(1, len(lines) + 1))
    assert all(len(r["hash"]) == 64 for r in lines)


async def test_verify_names_an_edited_deleted_or_swapped_record(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data")
    async with running_app(config) as api:
        for _ in range(6):
            await api.client.get("/api/v1/nodes")
        report = (await api.client.post("/api/v1/audit/verify")).json()
        assert report["ok"] is True
        assert report["records"] >= 6
        assert report["problem"] is None
        db = sqlite3.connect(config.sqlite_path)

        db.execute("UPDATE audit_records SET outcome = 'denied' WHERE seq = 3")
        db.commit()
        report = (await api.client.post("/api/v1/audit/verify")).json()
        assert (report["ok"], report["first_bad_seq"]) == (False, 3)
        assert report["problem"].startswith("record 3 does not match its hash")
        db.execute("UPDATE audit_records SET outcome = 'allowed' WHERE seq = 3")
        db.commit()
        assert (await api.client.post("/api/v1/audit/verify")).json()["ok"] is True

        # Swap the contents of records 2 and 4 (everything but their numbers).
        columns = (
            "time_us, request_id, principal, token_id, action, resources, source, outcome, "
            "error, grant_id, details, hash"
        )
        two = db.execute(f"SELECT {columns} FROM audit_records WHERE seq = 2").fetchone()
        four = db.execute(f"SELECT {columns} FROM audit_records WHERE seq = 4").fetchone()
        assignments = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
        db.execute(f"UPDATE audit_records SET {assignments} WHERE seq = 2", four)
        db.execute(f"UPDATE audit_records SET {assignments} WHERE seq = 4", two)
        db.commit()
        report = (await api.client.post("/api/v1/audit/verify")).json()
        assert (report["ok"], report["first_bad_seq"]) == (False, 2)
        db.execute(f"UPDATE audit_records SET {assignments} WHERE seq = 2", two)
        db.execute(f"UPDATE audit_records SET {assignments} WHERE seq = 4", four)
        db.commit()

        db.execute("DELETE FROM audit_records WHERE seq = 5")
        db.commit()
        report = (await api.client.post("/api/v1/audit/verify")).json()
        assert (report["ok"], report["first_bad_seq"]) == (False, 5)
        assert report["problem"] == "record 5 is missing (next is 6)"
        db.close()


async def test_truncation_is_found_by_checkpoints_even_after_a_restart(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data")
    async with running_app(config) as api:
        for _ in range(4):
            await api.client.get("/api/v1/nodes")
        checkpoint = (await api.client.post("/api/v1/audit/checkpoint")).json()
        assert checkpoint["count"] >= 4
        assert len(checkpoint["signature"]) == 128
    lines = config.audit_checkpoint_path.read_text().splitlines()
    assert json.loads(lines[0])["count"] == checkpoint["count"]
    db = sqlite3.connect(config.sqlite_path)
    db.execute("DELETE FROM audit_records WHERE seq >= ?", (checkpoint["count"] - 1,))
    db.execute("DELETE FROM audit_checkpoints")  # the copy in the database does not help them
    db.commit()
    db.close()
    async with running_app(config) as api:
        report = (await api.client.post("/api/v1/audit/verify")).json()
        assert report["ok"] is False
        assert report["first_bad_seq"] == checkpoint["count"] - 1
        assert "a signed checkpoint covers" in report["problem"]


async def test_the_audit_key_is_outside_the_database_and_required(tmp_path: Path) -> None:
    config = fast_config(tmp_path / "data")
    async with running_app(config) as api:
        await api.client.get("/api/v1/nodes")
    key = config.audit_key_path.read_text().strip()
    assert len(key) == 64
    assert (config.audit_key_path.stat().st_mode & 0o777) == 0o600
    assert key.encode() not in config.sqlite_path.read_bytes()
    config.audit_key_path.unlink()
    with pytest.raises(ValidationError, match=r"audit key .* is missing"):
        async with running_app(config):
            pass


async def test_tokens_never_reach_the_audit_log(api: Api) -> None:
    token = await make_user(api, "sam", "operator")
    created = await api.client.post("/api/v1/tokens", json={"user": "sam"})
    await api.client.get("/api/v1/whoami", headers=bearer(created.json()["token"]))
    await api.client.get("/api/v1/nodes", headers=bearer(token + "x"))
    activation = (await api.client.post("/api/v1/activations", json={})).json()
    await api.client.post(
        "/api/v1/register",
        json={
            "activation_id": activation["activation_id"],
            "activation_code": "wrong" * 6,
            "public_key": "A" * 44,
        },
    )
    export = (await api.client.get("/api/v1/audit/export")).text
    for secret in (
        token,
        created.json()["token"],
        api.token,
        activation["activation_code"],
        "wrong" * 6,
    ):
        assert secret not in export
    assert '"action":"node:Register"' in export.replace(" ", "")
