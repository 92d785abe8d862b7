"""`corral param` and `corral key` against a fake API: requests, paging, output, exits."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from corral.cli.client import CliError
from corral.cli.params import split_version, strip_final_newline

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.cli.conftest import FakeApi, Result

    Cli = Callable[..., Result]

SECRET = "hunter2-s3cr3t"
SEALED = "corral:v1:default:1:d3JhcHBlZA:Ym9keQ"
PUT = "/api/v1/parameters"
VALUE = "/api/v1/parameters/value"
BY_PATH = "/api/v1/parameters/by-path"
HISTORY = "/api/v1/parameters/history"
DELETE = "/api/v1/parameters/delete"


def value(name: str, **extra: Any) -> dict[str, Any]:
    """A parameter version as the API returns it."""
    return {
        "name": name,
        "type": "String",
        "value": "v",
        "version": 1,
        "labels": [],
        "last_modified": "2026-11-29T16:00:00.000Z",
        "data_type": "text",
        "selector": None,
        "decrypted": False,
        **extra,
    }


def meta(name: str, **extra: Any) -> dict[str, Any]:
    """A parameter's metadata as `GET /api/v1/parameters` returns it."""
    return {
        "name": name,
        "type": "String",
        "key_id": None,
        "tier": "Standard",
        "data_type": "text",
        "description": "",
        "allowed_pattern": None,
        "version": 1,
        "last_modified": "2026-11-29T16:00:00.000Z",
        "last_modified_by": "user:admin",
        "tags": {},
        "policies": [],
        "expires_at": None,
        **extra,
    }


def paged(key: str, items: list[dict[str, Any]]) -> Callable[[httpx.Request], httpx.Response]:
    """A fake paged route over `items`, honouring max_results and next_token like the server."""

    def handle(request: httpx.Request) -> httpx.Response:
        size = int(request.url.params.get("max_results", "10"))
        start = int(request.url.params.get("next_token") or 0)
        chunk = items[start : start + size]
        more = start + size < len(items)
        return httpx.Response(
            200, json={key: chunk, "next_token": str(start + size) if more else None}
        )

    return handle


def requests_to(api: FakeApi, path: str) -> list[httpx.Request]:
    return [r for r in api.requests if r.url.path == path]


def query(request: httpx.Request) -> list[tuple[str, str]]:
    return list(request.url.params.multi_items())


# --- pure helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", "abc"),
        ("abc\n", "abc"),
        ("abc\r\n", "abc"),
        ("line1\nline2\n", "line1\nline2"),
        ("abc\n\n", "abc\n\n"),
        ("abc\r\n\r\n", "abc\r\n\r\n"),
        ("\n", ""),
        ("", ""),
    ],
)
def test_strip_final_newline(text: str, expected: str) -> None:
    assert strip_final_newline(text) == expected


def test_split_version() -> None:
    assert split_version("/a/b", required=False) == ("/a/b", None)
    assert split_version("/a/b:3", required=False) == ("/a/b", 3)
    assert split_version("plain:12", required=True) == ("plain", 12)
    for bad in ("/a/b:prod", "/a/b:0", ":3", "/a/b:"):
        with pytest.raises(CliError) as raised:
            split_version(bad, required=False)
        assert raised.value.exit_code == 2
    with pytest.raises(CliError) as raised:
        split_version("/a/b", required=True)
    assert raised.value.exit_code == 2
    assert "NAME:VERSION" in raised.value.message


# --- put ------------------------------------------------------------------------


def test_put_sends_every_option(api: FakeApi, cli: Cli) -> None:
    api.on("POST", PUT, 201, {"name": "/app/db/url", "version": 1, "tier": "Advanced"})
    policies = (
        '[{"Type":"Expiration","Version":"1.0","Attributes":{"Timestamp":"2026-12-31T00:00:00Z"}}]'
    )
    result = cli(
        "param", "put", "/app/db/url", "postgres://db", "--type", "String",
        "--description", "the database", "--allowed-pattern", "^postgres://.*$",
        "--tag", "env=prod", "--tag", "team=core=x", "--tier", "Advanced",
        "--policies", policies, "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"name": "/app/db/url", "version": 1, "tier": "Advanced"}
    assert api.bodies("POST", PUT) == [
        {
            "name": "/app/db/url",
            "value": "postgres://db",
            "overwrite": False,
            "type": "String",
            "description": "the database",
            "allowed_pattern": "^postgres://.*$",
            "tier": "Advanced",
            "policies": policies,
            "tags": {"env": "prod", "team": "core=x"},
        }
    ]


def test_put_minimal_body_and_human_output(api: FakeApi, cli: Cli) -> None:
    api.on("POST", PUT, 201, {"name": "/app/token", "version": 4, "tier": "Standard"})
    result = cli(
        "param", "put", "/app/token", SECRET, "--type", "SecureString", "--key", "app",
        "--overwrite",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "Put /app/token version 4 (Standard)\n"
    assert SECRET not in result.stdout + result.stderr
    assert api.bodies("POST", PUT) == [
        {
            "name": "/app/token",
            "value": SECRET,
            "overwrite": True,
            "type": "SecureString",
            "key_id": "app",
        }
    ]


def test_put_value_after_double_dash(api: FakeApi, cli: Cli) -> None:
    api.on("POST", PUT, 201, {"name": "n", "version": 1, "tier": "Standard"})
    connection = ("--server", "http://corral.test", "--token", "t0k")
    result = cli(*connection, "param", "put", "n", "--", "-o", server=False)
    assert result.exit_code == 0, result.stderr
    assert api.bodies("POST", PUT)[0]["value"] == "-o"


@pytest.mark.parametrize(
    ("content", "sent"),
    [
        (b"secret\n", "secret"),
        (b"-----BEGIN-----\nabc\n-----END-----\n", "-----BEGIN-----\nabc\n-----END-----"),
        (b"kept\n\n", "kept\n\n"),
        (b"no newline", "no newline"),
        ("caf\u00e9\r\n".encode(), "caf\u00e9"),
    ],
)
def test_put_value_file(api: FakeApi, cli: Cli, tmp_path: Path, content: bytes, sent: str) -> None:
    api.on("POST", PUT, 201, {"name": "n", "version": 1, "tier": "Standard"})
    source = tmp_path / "value.txt"
    source.write_bytes(content)
    result = cli("param", "put", "n", "--value-file", str(source))
    assert result.exit_code == 0, result.stderr
    assert api.bodies("POST", PUT)[0]["value"] == sent


def test_put_value_from_stdin(api: FakeApi, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    api.on("POST", PUT, 201, {"name": "n", "version": 1, "tier": "Standard"})
    stdin = io.TextIOWrapper(io.BytesIO(f"{SECRET}\n".encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    result = cli("param", "put", "n", "--type", "SecureString", "--value-file", "-")
    assert result.exit_code == 0, result.stderr
    assert api.bodies("POST", PUT)[0]["value"] == SECRET
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("param", "put", "n"),  # no value at all
        ("param", "put", "n", "v", "--value-file", "-"),  # both
        ("param", "put", "n", "v", "--type", "Secure"),
        ("param", "put", "n", "v", "--tier", "Premium"),
        ("param", "put", "n", "v", "--tag", "novalue"),
    ],
)
def test_put_usage_errors_send_nothing(api: FakeApi, cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args, "-o", "json")
    assert result.exit_code == 2
    assert result.error()["type"] == "ValidationError"
    assert result.error()["field"] in ("value", "type", "tier", "tag")
    assert api.requests == []


def test_put_unreadable_value_file(api: FakeApi, cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    result = cli("param", "put", "n", "--value-file", str(missing), "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == "value_file"
    assert str(missing) in result.error()["message"]
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    result = cli("param", "put", "n", "--value-file", str(binary))
    assert result.exit_code == 2
    assert "is not UTF-8 text" in result.stderr
    assert SECRET not in result.stderr
    assert api.requests == []


def test_put_conflict_and_server_validation(api: FakeApi, cli: Cli) -> None:
    api.fail(
        "POST", PUT, 409, "ConflictError",
        "parameter /a already exists; use overwrite to add a version",
    )  # fmt: skip
    conflict = cli("param", "put", "/a", SECRET, "-o", "json")
    assert conflict.exit_code == 2
    assert conflict.error()["type"] == "ConflictError"
    assert SECRET not in conflict.stderr
    api.routes.clear()
    api.fail("POST", PUT, 400, "ValidationError", "the value does not match", "value")
    refused = cli("param", "put", "/a", SECRET, "--overwrite")
    assert refused.exit_code == 2
    assert refused.stderr == "error: value: the value does not match\n"


# --- get ------------------------------------------------------------------------


def test_get_json_is_the_server_object(api: FakeApi, cli: Cli) -> None:
    body = value("/app/db/url", value="postgres://db", version=3, labels=["prod"], selector=":prod")
    api.on("GET", VALUE, body=body)
    result = cli("param", "get", "/app/db/url:prod", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == body
    assert query(api.requests[0]) == [("name", "/app/db/url:prod"), ("decrypt", "false")]


def test_get_human_string(api: FakeApi, cli: Cli) -> None:
    api.on("GET", VALUE, body=value("/app/x", value="hello", version=3, labels=["a", "b"]))
    result = cli("param", "get", "/app/x")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == (
        "Name:          /app/x\n"
        "Type:          String\n"
        "Version:       3\n"
        "Labels:        a, b\n"
        "Last modified: 2026-11-29T16:00:00Z\n"
        "Value:         hello\n"
    )


def test_get_human_multiline_value(api: FakeApi, cli: Cli) -> None:
    api.on("GET", VALUE, body=value("/app/pem", value="line1\nline2"))
    result = cli("param", "get", "/app/pem")
    assert result.stdout.endswith(
        "Labels:        -\nLast modified: 2026-11-29T16:00:00Z\nValue:\nline1\nline2\n"
    )


def test_get_secure_string_without_and_with_decrypt(api: FakeApi, cli: Cli) -> None:
    api.on("GET", VALUE, body=value("/s", type="SecureString", value=SEALED))
    sealed = cli("param", "get", "/s")
    assert sealed.exit_code == 0
    assert "Value:         (encrypted; add --decrypt to show it)" in sealed.stdout
    assert SEALED not in sealed.stdout
    assert cli("param", "get", "/s", "-o", "json").json()["value"] == SEALED
    api.routes.clear()
    api.on("GET", VALUE, body=value("/s", type="SecureString", value=SECRET, decrypted=True))
    opened = cli("param", "get", "/s", "--decrypt")
    assert f"Value:         {SECRET}\n" in opened.stdout
    assert query(api.requests[-1]) == [("name", "/s"), ("decrypt", "true")]


@pytest.mark.parametrize(
    ("status", "type_", "code"),
    [(404, "NotFoundError", 3), (403, "AccessDeniedError", 4), (400, "ValidationError", 2)],
)
def test_get_errors(api: FakeApi, cli: Cli, status: int, type_: str, code: int) -> None:
    api.fail("GET", VALUE, status, type_, "nope", "name" if status == 400 else None)
    result = cli("param", "get", "/x", "--decrypt", "-o", "json")
    assert result.exit_code == code
    assert result.error()["type"] == type_


# --- get-by-path, list, history: paging ------------------------------------------


def test_get_by_path_pages_to_the_end(api: FakeApi, cli: Cli) -> None:
    items = [value(f"/app/p{i:02d}") for i in range(120)]
    api.routes[("GET", BY_PATH)] = [paged("parameters", items)]
    result = cli("param", "get-by-path", "/app", "--recursive", "--decrypt", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == items
    sent = requests_to(api, BY_PATH)
    assert len(sent) == 3
    assert query(sent[0]) == [
        ("path", "/app"), ("recursive", "true"), ("decrypt", "true"), ("max_results", "50"),
    ]  # fmt: skip
    assert sent[1].url.params["next_token"] == "50"
    assert sent[2].url.params["next_token"] == "100"


def test_get_by_path_human_hides_sealed_values(api: FakeApi, cli: Cli) -> None:
    items = [
        value("/app/a", value="plain-a"),
        value("/app/s", type="SecureString", value=SEALED),
    ]
    api.on("GET", BY_PATH, body={"parameters": items, "next_token": None})
    result = cli("param", "get-by-path", "/app")
    assert result.exit_code == 0, result.stderr
    assert query(api.requests[0])[:3] == [
        ("path", "/app"), ("recursive", "false"), ("decrypt", "false"),
    ]  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "VERSION", "LAST", "MODIFIED", "VALUE"]
    assert "plain-a" in lines[1]
    assert "(encrypted)" in lines[2]
    assert SEALED not in result.stdout


def test_paging_stops_on_a_repeated_token(api: FakeApi, cli: Cli) -> None:
    api.on("GET", BY_PATH, body={"parameters": [value("/a")], "next_token": "same"})
    result = cli("param", "get-by-path", "/", "-o", "json")
    assert result.exit_code == 1
    assert "repeated a next_token" in result.error()["message"]


def test_list_filters_paging_and_table(api: FakeApi, cli: Cli) -> None:
    items = [meta(f"/app/p{i:02d}") for i in range(60)]
    items[0] = meta(
        "/app/p00",
        tier="Advanced",
        version=2,
        policies=[
            {"type": "Expiration", "status": "Pending", "policy_text": "{}"},
            {"type": "NoChangeNotification", "status": "Finished", "policy_text": "{}"},
        ],
    )
    api.routes[("GET", PUT)] = [paged("parameters", items)]
    result = cli(
        "param", "list", "--path", "/app", "--type", "SecureString", "--key", "app",
        "--tag", "env=prod", "--tag", "team", "-o", "json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.json() == items
    sent = requests_to(api, PUT)
    assert len(sent) == 2
    assert query(sent[0]) == [
        ("path", "/app"), ("type", "SecureString"), ("key_id", "app"), ("tag", "env=prod"),
        ("tag", "team"), ("max_results", "50"),
    ]  # fmt: skip
    table = cli("param", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "TYPE", "VERSION", "TIER", "LAST", "MODIFIED", "POLICIES"]
    assert table[1].split() == [
        "/app/p00", "String", "2", "Advanced", "2026-11-29T16:00:00Z",
        "Expiration:", "Pending,", "NoChangeNotification:", "Finished",
    ]  # fmt: skip
    assert table[2].split()[-1] == "-"
    assert len(table) == 61


def test_list_bad_type_is_a_usage_error(api: FakeApi, cli: Cli) -> None:
    assert cli("param", "list", "--type", "Number").exit_code == 2
    assert api.requests == []


def test_history_pages_and_hides_sealed_values(api: FakeApi, cli: Cli) -> None:
    versions = [
        {
            **value(
                "/s",
                type="SecureString",
                value=SEALED,
                version=i,
                labels=["prod"] if i == 2 else [],
            ),
            "key_id": "default",
            "description": "",
            "allowed_pattern": None,
            "tier": "Standard",
            "policies": [],
            "last_modified_by": "user:admin",
        }
        for i in range(1, 56)
    ]
    api.routes[("GET", HISTORY)] = [paged("versions", versions)]
    result = cli("param", "history", "/s", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == versions
    assert query(requests_to(api, HISTORY)[0]) == [
        ("name", "/s"), ("decrypt", "false"), ("max_results", "50"),
    ]  # fmt: skip
    human = cli("param", "history", "/s")
    lines = human.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "LABELS", "LAST", "MODIFIED", "MODIFIED", "BY", "VALUE"]
    assert lines[2].split() == ["2", "prod", "2026-11-29T16:00:00Z", "user:admin", "(encrypted)"]
    assert SEALED not in human.stdout


# --- label, unlabel -------------------------------------------------------------


def test_label_latest_and_a_version(api: FakeApi, cli: Cli) -> None:
    api.on(
        "POST", "/api/v1/parameters/label", body={"name": "/a", "version": 4, "invalid_labels": []}
    )
    latest = cli("param", "label", "/a", "prod", "blue")
    assert latest.exit_code == 0, latest.stderr
    assert latest.stdout == "Labelled /a version 4: prod, blue\n"
    pinned = cli("param", "label", "/a:2", "prod", "-o", "json")
    assert pinned.json() == {"name": "/a", "version": 4, "invalid_labels": []}
    assert api.bodies("POST", "/api/v1/parameters/label") == [
        {"name": "/a", "labels": ["prod", "blue"]},
        {"name": "/a", "version": 2, "labels": ["prod"]},
    ]


def test_label_refused_labels_exit_2(api: FakeApi, cli: Cli) -> None:
    api.on(
        "POST",
        "/api/v1/parameters/label",
        body={"name": "/a", "version": 1, "invalid_labels": ["x"]},
    )
    result = cli("param", "label", "/a", "ok", "x")
    assert result.exit_code == 2
    assert result.stdout == "Labelled /a version 1: ok\n"
    assert "labels refused: x" in result.stderr


@pytest.mark.parametrize("ref", ["/a:prod", "/a:0", "/a:"])
def test_label_bad_version(api: FakeApi, cli: Cli, ref: str) -> None:
    result = cli("param", "label", ref, "prod", "-o", "json")
    assert result.exit_code == 2
    assert result.error()["field"] == "name"
    assert api.requests == []


def test_unlabel_needs_a_version(api: FakeApi, cli: Cli) -> None:
    result = cli("param", "unlabel", "/a", "prod")
    assert result.exit_code == 2
    assert "NAME:VERSION" in result.stderr
    assert api.requests == []
    assert cli("param", "unlabel", "/a:3").exit_code == 2  # no label: Typer's usage error


def test_unlabel_removed_and_missing(api: FakeApi, cli: Cli) -> None:
    path = "/api/v1/parameters/unlabel"
    api.on("POST", path, body={"removed_labels": ["prod"], "invalid_labels": []})
    done = cli("param", "unlabel", "/a:3", "prod")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == "Removed from /a version 3: prod\n"
    api.routes.clear()
    api.on("POST", path, body={"removed_labels": ["prod"], "invalid_labels": ["gone"]})
    partial = cli("param", "unlabel", "/a:3", "prod", "gone", "-o", "json")
    assert partial.exit_code == 3
    assert partial.json() == {"removed_labels": ["prod"], "invalid_labels": ["gone"]}
    human = cli("param", "unlabel", "/a:3", "prod", "gone")
    assert human.exit_code == 3
    assert human.stderr == "error: not on /a version 3: gone\n"
    assert api.bodies("POST", path)[0] == {"name": "/a", "version": 3, "labels": ["prod"]}


# --- delete ---------------------------------------------------------------------


def deleting(missing: set[str]) -> Callable[[httpx.Request], httpx.Response]:
    def handle(request: httpx.Request) -> httpx.Response:
        names = json.loads(request.content)["names"]
        assert len(names) <= 10
        return httpx.Response(
            200,
            json={
                "deleted": [n for n in names if n not in missing],
                "invalid": [n for n in names if n in missing],
            },
        )

    return handle


def test_delete_batches_of_ten(api: FakeApi, cli: Cli) -> None:
    api.routes[("POST", DELETE)] = [deleting(set())]
    names = [f"/p{i}" for i in range(23)]
    result = cli("param", "delete", *names, "/p0", "-o", "json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == {"deleted": names, "invalid": []}
    assert [len(b["names"]) for b in api.bodies("POST", DELETE)] == [10, 10, 3]


def test_delete_unknown_names_exit_3(api: FakeApi, cli: Cli) -> None:
    api.routes[("POST", DELETE)] = [deleting({"/nope"})]
    result = cli("param", "delete", "/a", "/nope", "/b", "-o", "json")
    assert result.exit_code == 3
    assert result.json() == {"deleted": ["/a", "/b"], "invalid": ["/nope"]}
    human = cli("param", "delete", "/a", "/nope")
    assert human.exit_code == 3
    assert human.stdout == "Deleted /a\n"
    assert human.stderr == "error: parameter /nope does not exist\n"


def test_delete_error_in_a_later_batch_says_what_was_deleted(api: FakeApi, cli: Cli) -> None:
    api.routes[("POST", DELETE)] = [deleting(set())]
    api.fail("POST", DELETE, 403, "AccessDeniedError", "not allowed")
    result = cli("param", "delete", *[f"/p{i}" for i in range(12)])
    assert result.exit_code == 4
    assert "Deleted before the error: /p0, /p1" in result.stderr
    assert "error: not allowed" in result.stderr


# --- keys -----------------------------------------------------------------------

KEY: dict[str, Any] = {
    "name": "app",
    "current_version": 1,
    "versions": 1,
    "created_at": "2026-11-29T16:00:00.000Z",
    "rotated_at": None,
}


def test_key_create_and_list(api: FakeApi, cli: Cli) -> None:
    api.on("POST", "/api/v1/keys", 201, KEY)
    created = cli("key", "create", "app", "-o", "json")
    assert created.exit_code == 0, created.stderr
    assert created.json() == KEY
    assert api.bodies("POST", "/api/v1/keys") == [{"name": "app"}]
    table = cli("key", "create", "app").stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "VERSIONS", "CREATED", "ROTATED"]
    assert table[1].split() == ["app", "1", "1", "2026-11-29T16:00:00Z", "-"]
    api.on("GET", "/api/v1/keys", body=[KEY, {**KEY, "name": "default"}])
    assert cli("key", "list", "-o", "json").json()[1]["name"] == "default"
    listed = cli("key", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["NAME", "app", "default"]


def test_key_rotate(api: FakeApi, cli: Cli) -> None:
    rotated = {
        **KEY,
        "current_version": 2,
        "versions": 2,
        "rotated_at": KEY["created_at"],
        "rewrapped": 7,
    }
    api.on("POST", "/api/v1/keys/app/x/rotate", body=rotated)
    result = cli("key", "rotate", "app/x")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "Rotated key app to version 2; re-wrapped 7 SecureString values."
    )
    assert api.requests[-1].url.raw_path == b"/api/v1/keys/app%2Fx/rotate"
    assert cli("key", "rotate", "app/x", "-o", "json").json() == rotated


@pytest.mark.parametrize(
    ("args", "status", "type_", "code"),
    [
        (("key", "create", "app"), 409, "ConflictError", 2),
        (("key", "rotate", "nope"), 404, "NotFoundError", 3),
        (("key", "list"), 403, "AccessDeniedError", 4),
    ],
)
def test_key_errors(
    api: FakeApi, cli: Cli, args: tuple[str, ...], status: int, type_: str, code: int
) -> None:
    method = "GET" if args[1] == "list" else "POST"
    path = {"create": "/api/v1/keys", "list": "/api/v1/keys", "rotate": "/api/v1/keys/nope/rotate"}
    api.fail(method, path[args[1]], status, type_, "no")
    result = cli(*args, "-o", "json")
    assert result.exit_code == code
    assert result.error()["type"] == type_


def test_groups_are_registered(cli: Cli) -> None:
    result = cli("--help", server=False)
    assert result.exit_code == 0
    assert "param" in result.stdout
    assert "key" in result.stdout
