"""`corral param` and `corral key` against a real server (SQLite, background thread)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from corral.cli import params
from tests.cli.liveserver import Live, as_principal, live

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import Result

    Cli = Callable[..., Result]

__all__ = ["live"]  # the fixture, imported for the tests below

SECRET = "pa55-w0rd-plaintext"
EXPIRES = (
    '[{"Type":"Expiration","Version":"1.0","Attributes":{"Timestamp":"2099-12-31T00:00:00Z"}}]'
)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.stdout + result.stderr
    return result


def test_put_and_get_each_type(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    put = ok(admin("param", "put", "/app/dev/url", "https://dev.example", "-o", "json")).json()
    assert put == {"name": "/app/dev/url", "version": 1, "tier": "Standard"}
    got = ok(admin("param", "get", "/app/dev/url", "-o", "json")).json()
    assert {k: got[k] for k in ("name", "type", "value", "version", "labels")} == {
        "name": "/app/dev/url",
        "type": "String",
        "value": "https://dev.example",
        "version": 1,
        "labels": [],
    }
    assert got["last_modified"].endswith("Z")
    assert "Value:         https://dev.example" in ok(admin("param", "get", "/app/dev/url")).stdout

    human = ok(admin("param", "put", "/app/dev/hosts", "a,b,c", "--type", "StringList"))
    assert human.stdout == "Put /app/dev/hosts version 1 (Standard)\n"
    hosts = ok(admin("param", "get", "/app/dev/hosts", "-o", "json")).json()
    assert (hosts["type"], hosts["value"]) == ("StringList", "a,b,c")

    secure = ok(admin("param", "put", "/app/dev/password", SECRET, "--type", "SecureString"))
    assert secure.stdout == "Put /app/dev/password version 1 (Standard)\n"
    assert SECRET not in secure.stdout + secure.stderr
    sealed = ok(admin("param", "get", "/app/dev/password", "-o", "json")).json()
    assert sealed["type"] == "SecureString"
    assert sealed["value"].startswith("corral:v1:")
    assert SECRET not in sealed["value"]
    shown = ok(admin("param", "get", "/app/dev/password"))
    assert "(encrypted; add --decrypt to show it)" in shown.stdout
    assert SECRET not in shown.stdout
    assert sealed["value"] not in shown.stdout
    opened = ok(admin("param", "get", "/app/dev/password", "--decrypt", "-o", "json")).json()
    assert opened["value"] == SECRET
    assert (
        f"Value:         {SECRET}"
        in ok(admin("param", "get", "/app/dev/password", "--decrypt")).stdout
    )

    # a viewer may read but not decrypt, nor write
    created = ok(admin("user", "create", "vera", "--role", "viewer", "-o", "json")).json()
    viewer = as_principal(cli, live, created["token"])
    assert (
        ok(viewer("param", "get", "/app/dev/password", "-o", "json")).json()["value"]
        == (sealed["value"])
    )
    denied = viewer("param", "get", "/app/dev/password", "--decrypt", "-o", "json")
    assert denied.exit_code == 4
    assert denied.error()["type"] == "AccessDeniedError"
    assert viewer("param", "put", "/app/dev/x", "y").exit_code == 4

    # not found, bad names
    missing = admin("param", "get", "/app/dev/nothing", "-o", "json")
    assert missing.exit_code == 3
    assert missing.error()["type"] == "NotFoundError"
    bad = admin("param", "put", "app/no-leading-slash", "v", "-o", "json")
    assert bad.exit_code == 2
    assert bad.error()["field"] == "name"
    too_big = admin("param", "put", "/app/big", "x" * 5000, "-o", "json")
    assert too_big.exit_code == 2
    assert "x" * 50 not in too_big.stderr


def test_versions_overwrite_labels_and_history(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    ok(admin("param", "put", "/svc/token", "first-" + SECRET, "--type", "SecureString"))
    again = admin("param", "put", "/svc/token", "second-" + SECRET, "-o", "json")
    assert again.exit_code == 2
    assert again.error()["type"] == "ConflictError"
    assert "overwrite" in again.error()["message"]
    assert SECRET not in again.stderr
    second = ok(
        admin("param", "put", "/svc/token", "second-" + SECRET, "--overwrite", "-o", "json")
    ).json()
    assert second["version"] == 2
    ok(admin("param", "put", "/svc/token", "third-" + SECRET, "--overwrite"))

    def value_of(ref: str) -> str:
        got = ok(admin("param", "get", ref, "--decrypt", "-o", "json")).json()
        return str(got["value"])

    assert value_of("/svc/token") == "third-" + SECRET
    assert value_of("/svc/token:1") == "first-" + SECRET

    # label the latest, then a version; a label moves between versions
    labelled = ok(admin("param", "label", "/svc/token", "current", "-o", "json")).json()
    assert labelled["version"] == 3
    human = ok(admin("param", "label", "/svc/token:1", "prod", "stable"))
    assert human.stdout == "Labelled /svc/token version 1: prod, stable\n"
    assert value_of("/svc/token:prod") == "first-" + SECRET
    ok(admin("param", "label", "/svc/token:2", "prod"))
    got = ok(admin("param", "get", "/svc/token:prod", "--decrypt", "-o", "json")).json()
    assert (got["version"], got["value"], got["labels"]) == (2, "second-" + SECRET, ["prod"])
    assert admin("param", "get", "/svc/token:nolabel").exit_code == 3
    assert admin("param", "label", "/svc/token:9", "x").exit_code == 3
    assert admin("param", "label", "/svc/token", "1bad").exit_code == 2

    # unlabel needs NAME:VERSION; a label not on that version exits 3
    assert admin("param", "unlabel", "/svc/token", "prod").exit_code == 2
    removed = ok(admin("param", "unlabel", "/svc/token:1", "stable", "-o", "json")).json()
    assert removed == {"removed_labels": ["stable"], "invalid_labels": []}
    partial = admin("param", "unlabel", "/svc/token:2", "prod", "stable")
    assert partial.exit_code == 3
    assert partial.stdout == "Removed from /svc/token version 2: prod\n"
    assert "stable" in partial.stderr
    assert admin("param", "get", "/svc/token:prod").exit_code == 3

    # history: oldest first; sealed unless --decrypt; no plaintext in the human table
    versions = ok(admin("param", "history", "/svc/token", "-o", "json")).json()
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert all(v["value"].startswith("corral:v1:") for v in versions)
    assert versions[2]["labels"] == ["current"]
    table = ok(admin("param", "history", "/svc/token"))
    assert SECRET not in table.stdout + table.stderr
    assert table.stdout.count("(encrypted)") == 3
    assert "user:admin" in table.stdout
    opened = ok(admin("param", "history", "/svc/token", "--decrypt", "-o", "json")).json()
    assert [v["value"] for v in opened] == [
        "first-" + SECRET,
        "second-" + SECRET,
        "third-" + SECRET,
    ]
    assert SECRET in ok(admin("param", "history", "/svc/token", "--decrypt")).stdout


@pytest.mark.parametrize("page_size", [5, params.PAGE_SIZE])
def test_get_by_path_pages(
    cli: Cli, live: Live, monkeypatch: pytest.MonkeyPatch, page_size: int
) -> None:
    monkeypatch.setattr(params, "PAGE_SIZE", page_size)
    admin = as_principal(cli, live, live.admin_token)
    top = [f"/fleet/p{i:02d}" for i in range(12)]
    nested = [f"/fleet/sub/n{i}" for i in range(3)]
    for name in top + nested:
        ok(admin("param", "put", name, f"value of {name}"))
    ok(admin("param", "put", "/fleet/sub/secret", SECRET, "--type", "SecureString"))
    ok(admin("param", "put", "/other/x", "elsewhere"))

    level = ok(admin("param", "get-by-path", "/fleet", "-o", "json")).json()
    assert [p["name"] for p in level] == top
    assert [p["value"] for p in level] == [f"value of {n}" for n in top]
    every = ok(admin("param", "get-by-path", "/fleet", "--recursive", "-o", "json")).json()
    assert sorted(p["name"] for p in every) == sorted([*top, *nested, "/fleet/sub/secret"])
    sealed = next(p for p in every if p["name"] == "/fleet/sub/secret")
    assert sealed["value"].startswith("corral:v1:")
    table = ok(admin("param", "get-by-path", "/fleet", "--recursive"))
    assert SECRET not in table.stdout
    assert "(encrypted)" in table.stdout
    assert "value of /fleet/p11" in table.stdout
    opened = ok(
        admin("param", "get-by-path", "/fleet/sub", "--recursive", "--decrypt", "-o", "json")
    ).json()
    assert {p["name"]: p["value"] for p in opened}["/fleet/sub/secret"] == SECRET
    assert ok(admin("param", "get-by-path", "/nothing/here", "-o", "json")).json() == []
    assert admin("param", "get-by-path", "no-slash").exit_code == 2


def test_list_filters_and_policies(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    ok(admin("param", "put", "/shop/prod/db", "db", "--tag", "env=prod", "--tag", "team=core"))
    ok(admin("param", "put", "/shop/dev/db", "db", "--tag", "env=dev"))
    ok(
        admin(
            "param", "put", "/shop/prod/key", SECRET, "--type", "SecureString",
            "--tag", "env=prod", "--tier", "Advanced", "--policies", EXPIRES,
            "--description", "api key",
        )
    )  # fmt: skip
    ok(admin("param", "put", "/else/thing", "x"))

    everything = ok(admin("param", "list", "-o", "json")).json()
    assert {p["name"] for p in everything} >= {"/shop/prod/db", "/shop/dev/db", "/else/thing"}
    assert all("value" not in p for p in everything)
    shop = ok(admin("param", "list", "--path", "/shop", "-o", "json")).json()
    assert [p["name"] for p in shop] == ["/shop/dev/db", "/shop/prod/db", "/shop/prod/key"]
    secure = ok(admin("param", "list", "--type", "SecureString", "-o", "json")).json()
    assert [p["name"] for p in secure] == ["/shop/prod/key"]
    [key] = secure
    assert (key["tier"], key["key_id"], key["description"]) == ("Advanced", "default", "api key")
    assert [(p["type"], p["status"]) for p in key["policies"]] == [("Expiration", "Pending")]
    assert key["expires_at"].startswith("2099-12-31T00:00:00")
    prod = ok(admin("param", "list", "--tag", "env=prod", "-o", "json")).json()
    assert [p["name"] for p in prod] == ["/shop/prod/db", "/shop/prod/key"]
    both = ok(admin("param", "list", "--tag", "env=prod", "--tag", "team=core", "-o", "json"))
    assert [p["name"] for p in both.json()] == ["/shop/prod/db"]
    assert [
        p["name"] for p in ok(admin("param", "list", "--tag", "env=dev,test", "-o", "json")).json()
    ] == ["/shop/dev/db"]

    table = ok(admin("param", "list", "--path", "/shop"))
    assert SECRET not in table.stdout + table.stderr
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    assert rows["/shop/prod/key"].split()[1:4] == ["SecureString", "1", "Advanced"]
    assert rows["/shop/prod/key"].rstrip().endswith("Expiration: Pending")
    assert rows["/shop/dev/db"].rstrip().endswith("-")

    bad_policy = admin("param", "put", "/shop/p", "v", "--tier", "Advanced", "--policies", "[1]")
    assert bad_policy.exit_code == 2
    assert "policies" in bad_policy.stderr
    needs_advanced = admin("param", "put", "/shop/q", "v", "--policies", EXPIRES, "-o", "json")
    assert needs_advanced.exit_code == 2
    assert needs_advanced.error()["field"] == "policies"


def test_delete(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    names = [f"/gone/p{i:02d}" for i in range(13)]
    for name in names:
        ok(admin("param", "put", name, "v"))
    result = admin("param", "delete", *names, "/gone/never", "-o", "json")
    assert result.exit_code == 3, result.stderr
    assert result.json() == {"deleted": names, "invalid": ["/gone/never"]}
    assert ok(admin("param", "list", "--path", "/gone", "-o", "json")).json() == []
    ok(admin("param", "put", "/gone/last", "v"))
    human = admin("param", "delete", "/gone/last", "/gone/never")
    assert human.exit_code == 3
    assert human.stdout == "Deleted /gone/last\n"
    assert human.stderr == "error: parameter /gone/never does not exist\n"
    assert admin("param", "get", "/gone/last").exit_code == 3
    ok(admin("param", "put", "/gone/again", "v"))
    assert ok(admin("param", "delete", "/gone/again")).stdout == "Deleted /gone/again\n"


def test_keys_create_list_rotate(cli: Cli, live: Live) -> None:
    admin = as_principal(cli, live, live.admin_token)
    created = ok(admin("key", "create", "payments", "-o", "json")).json()
    assert (created["name"], created["current_version"], created["versions"]) == (
        "payments",
        1,
        1,
    )
    assert admin("key", "create", "payments", "-o", "json").error()["type"] == "ConflictError"
    assert admin("key", "create", "bad/name").exit_code == 2

    ok(
        admin(
            "param",
            "put",
            "/pay/token",
            "v1-" + SECRET,
            "--type",
            "SecureString",
            "--key",
            "payments",
        )
    )
    ok(admin("param", "put", "/pay/token", "v2-" + SECRET, "--overwrite"))
    ok(admin("param", "put", "/pay/other", SECRET, "--type", "SecureString"))  # default key

    listed = ok(admin("key", "list", "-o", "json")).json()
    assert [k["name"] for k in listed] == ["default", "payments"]
    table = ok(admin("key", "list")).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "VERSIONS", "CREATED", "ROTATED"]
    assert table[2].split()[:3] == ["payments", "1", "1"]
    assert table[2].split()[-1] == "-"
    meta = ok(admin("param", "list", "--path", "/pay", "-o", "json")).json()
    assert {p["name"]: p["key_id"] for p in meta} == {
        "/pay/other": "default",
        "/pay/token": "payments",
    }

    rotated = ok(admin("key", "rotate", "payments", "-o", "json")).json()
    assert (rotated["current_version"], rotated["versions"], rotated["rewrapped"]) == (2, 2, 2)
    assert rotated["rotated_at"].endswith("Z")
    human = ok(admin("key", "rotate", "payments"))
    assert human.stdout.splitlines()[-1] == (
        "Rotated key payments to version 3; re-wrapped 2 SecureString values."
    )
    assert SECRET not in human.stdout

    def opened(ref: str) -> str:
        return str(ok(admin("param", "get", ref, "--decrypt", "-o", "json")).json()["value"])

    assert opened("/pay/token") == "v2-" + SECRET
    assert opened("/pay/token:1") == "v1-" + SECRET
    assert opened("/pay/other") == SECRET
    ok(admin("param", "put", "/pay/token", "v3-" + SECRET, "--overwrite"))
    assert opened("/pay/token") == "v3-" + SECRET

    assert admin("key", "rotate", "nope", "-o", "json").exit_code == 3
    viewer_token = ok(admin("user", "create", "kim", "--role", "viewer", "-o", "json")).json()
    viewer = as_principal(cli, live, viewer_token["token"])
    now = ok(admin("key", "list", "-o", "json")).json()
    assert ok(viewer("key", "list", "-o", "json")).json() == now
    assert [(k["name"], k["current_version"]) for k in now] == [("default", 1), ("payments", 3)]
    assert viewer("key", "rotate", "payments").exit_code == 4
    assert viewer("key", "create", "mine").exit_code == 4


def test_value_file_and_stdin(
    cli: Cli, live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = as_principal(cli, live, live.admin_token)
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    source = tmp_path / "cert.pem"
    source.write_text(pem + "\n")
    ok(admin("param", "put", "/files/cert", "--value-file", str(source)))
    got = ok(admin("param", "get", "/files/cert", "-o", "json")).json()
    assert got["value"] == pem
    human = ok(admin("param", "get", "/files/cert")).stdout
    assert human.endswith("Value:\n" + pem + "\n")

    stdin = io.TextIOWrapper(io.BytesIO(f"{SECRET}\n".encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    put = ok(admin("param", "put", "/files/secret", "--type", "SecureString", "--value-file", "-"))
    assert SECRET not in put.stdout + put.stderr
    opened = ok(admin("param", "get", "/files/secret", "--decrypt", "-o", "json")).json()
    assert opened["value"] == SECRET

    both = admin("param", "put", "/files/x", "v", "--value-file", str(source), "-o", "json")
    assert both.exit_code == 2
    assert both.error()["field"] == "value"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    refused = admin("param", "put", "/files/empty", "--value-file", str(empty), "-o", "json")
    assert refused.exit_code == 2
    assert refused.error()["field"] == "value"
