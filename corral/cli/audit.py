"""`corral audit`: list, export, verify and checkpoint the tamper-evident audit log.

`--since` / `--until` take an ISO 8601 time (naive means UTC) or a duration meaning
"that long ago" (`1h`, `7d`); either way the API gets an ISO UTC time. `audit list`
pages through the API (newest first) with its `next_before` cursor until `--limit`
records. `audit export` streams the server's JSONL (oldest first) to stdout unchanged.
`audit verify` exits 0 when the chain is intact and 1 otherwise, naming the first bad
record.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import typer

from corral.cli import output
from corral.cli.client import (
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    ApiClient,
    CliError,
    _certificate_error,
    error_from_response,
)
from corral.cli.state import app_state
from corral.cli.values import parse_duration
from corral.errors import ValidationError

app = typer.Typer(help="Query, export, verify and checkpoint the audit log.")

OUTCOMES = ("allowed", "denied", "failed")
MAX_PAGE = 1000  # the API's largest `limit`
_COLUMNS = ["SEQ", "TIME", "PRINCIPAL", "ACTION", "OUTCOME", "RESOURCES", "GRANT", "ERROR"]
_RESOURCES_SHOWN = 3


def parse_time(text: str, field: str, now: datetime | None = None) -> str:
    """An ISO 8601 time, or a duration meaning that long before `now`, as ISO UTC with `Z`."""
    value = text.strip()
    moment: datetime | None = None
    try:
        seconds = parse_duration(value, field)
    except ValidationError:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValidationError(
                f"invalid --{field} {text!r}: use an ISO 8601 time (e.g. 2026-01-31T12:00:00Z) "
                "or a duration meaning that long ago (e.g. 30m, 24h, 7d)",
                field=field,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    else:
        moment = (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_filters(
    since: str | None,
    until: str | None,
    principal: str | None,
    action: str | None,
    outcome: str | None,
    grant: str | None,
    now: datetime | None = None,
) -> dict[str, str]:
    """The API query for the common filters (times converted to ISO UTC)."""
    if outcome is not None and outcome not in OUTCOMES:
        raise ValidationError(
            f"invalid --outcome {outcome!r}: use one of {', '.join(OUTCOMES)}", field="outcome"
        )
    params: dict[str, str] = {}
    if since is not None:
        params["since"] = parse_time(since, "since", now)
    if until is not None:
        params["until"] = parse_time(until, "until", now)
    for key, value in (
        ("principal", principal),
        ("action", action),
        ("outcome", outcome),
        ("grant_id", grant),
    ):
        if value is not None:
            params[key] = value
    return params


SinceOption = Annotated[
    str | None,
    typer.Option("--since", help="From this time: ISO 8601, or a duration ago (1h, 7d)."),
]
UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="Up to this time: ISO 8601, or a duration ago (1h, 7d)."),
]
PrincipalOption = Annotated[
    str | None, typer.Option("--principal", help="Only this principal (e.g. user:alice).")
]
ActionOption = Annotated[
    str | None, typer.Option("--action", help="Only this action (e.g. command:Send).")
]
OutcomeOption = Annotated[
    str | None, typer.Option("--outcome", help="Only this outcome: allowed, denied or failed.")
]
GrantOption = Annotated[
    str | None, typer.Option("--grant", help="Only records linked to this access request.")
]


def format_resources(value: Any) -> str:
    """The first few resources of a record, with a count of the rest."""
    if not isinstance(value, list) or not value:
        return "-"
    shown = ", ".join(str(item) for item in value[:_RESOURCES_SHOWN])
    rest = len(value) - _RESOURCES_SHOWN
    return shown + (f" (+{rest} more)" if rest > 0 else "")


def record_row(record: dict[str, Any]) -> list[str]:
    """One row of the audit table."""
    return [
        str(record.get("seq", "")),
        output.format_time(record.get("time")),
        output.text_or_dash(record.get("principal")),
        output.text_or_dash(record.get("action")),
        output.text_or_dash(record.get("outcome")),
        format_resources(record.get("resources")),
        output.text_or_dash(record.get("grant_id")),
        output.text_or_dash(record.get("error")),
    ]


def fetch_records(
    client: ApiClient, filters: dict[str, str], limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Up to `limit` records, newest first, and whether more matched."""
    records: list[dict[str, Any]] = []
    before: Any = None
    while len(records) < limit:
        params: dict[str, Any] = {**filters, "limit": min(MAX_PAGE, limit - len(records))}
        if before is not None:
            params["before"] = before
        page = client.get("/api/v1/audit", params=params)
        batch = [r for r in page.get("records") or [] if isinstance(r, dict)]
        records.extend(batch)
        before = page.get("next_before")
        if before is None or not batch:
            return records, False
    return records[:limit], before is not None


@app.command("list")
def list_(
    ctx: typer.Context,
    since: SinceOption = None,
    until: UntilOption = None,
    principal: PrincipalOption = None,
    action: ActionOption = None,
    outcome: OutcomeOption = None,
    grant: GrantOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="At most this many records (newest first).")
    ] = 100,
) -> None:
    """List audit records, newest first."""
    state = app_state(ctx)
    filters = build_filters(since, until, principal, action, outcome, grant)
    with state.client() as client:
        records, more = fetch_records(client, filters, limit)
    if state.json_output:
        output.emit_json(records)
        return
    output.print_table(_COLUMNS, [record_row(record) for record in records])
    if more:
        output.note(f"Showing the newest {limit} records; more may match (raise --limit).")


def _stream_failure(client: ApiClient, exc: httpx.HTTPError, started: bool) -> CliError:
    """The CliError for a transport failure while streaming (mapped as ApiClient.request does)."""
    server = client.connection.server
    untrusted = _certificate_error(exc)
    if started:
        message = f"the export from server {server} broke off: {exc}"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"server {server} did not answer in time"
    elif untrusted is not None:
        message = client._untrusted_message(untrusted)
    else:
        message = f"cannot reach server {server}: {exc}"
    return CliError(message, type_="UnavailableError", exit_code=EXIT_UNAVAILABLE)


@contextmanager
def _streamed(client: ApiClient, path: str, params: dict[str, str]) -> Iterator[httpx.Response]:
    """GET `path` as a stream; non-2xx answers and transport errors become CliError.

    ApiClient has no streaming call, so this uses its httpx client (same base URL,
    token, TLS settings and test transport) and maps errors the way it does.
    """
    started = False
    try:
        with client._http.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            started = True
            yield response
    except httpx.TransportError as exc:
        raise _stream_failure(client, exc, started) from exc


def _write_bytes(chunk: bytes) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(chunk.decode("utf-8"))
    else:
        buffer.write(chunk)


@app.command("export")
def export(
    ctx: typer.Context,
    since: SinceOption = None,
    until: UntilOption = None,
    principal: PrincipalOption = None,
    action: ActionOption = None,
    outcome: OutcomeOption = None,
    grant: GrantOption = None,
) -> None:
    """Write matching records to stdout as JSON Lines, oldest first, exactly as served.

    Always JSON Lines (one record per line, with its hash), with or without -o json.
    """
    state = app_state(ctx)
    filters = build_filters(since, until, principal, action, outcome, grant)
    lines = 0
    with state.client() as client, _streamed(client, "/api/v1/audit/export", filters) as response:
        sys.stdout.flush()
        for chunk in response.iter_bytes():
            lines += chunk.count(b"\n")
            _write_bytes(chunk)
        sys.stdout.flush()
    if not state.json_output:
        output.note(f"Exported {lines} audit record{'' if lines == 1 else 's'}.")


@app.command("verify")
def verify(ctx: typer.Context) -> None:
    """Recompute the hash chain and check the signed checkpoints (exit 1 if tampered)."""
    state = app_state(ctx)
    with state.client() as client:
        report = client.post("/api/v1/audit/verify")
    ok = bool(report.get("ok"))
    if state.json_output:
        output.emit_json(report)
    else:
        pairs = [
            ("Result", "intact" if ok else "NOT INTACT"),
            ("Records checked", output.text_or_dash(report.get("records"))),
            ("Checkpoints", output.text_or_dash(report.get("checkpoints"))),
            ("Head hash", output.text_or_dash(report.get("head_hash"))),
        ]
        if not ok:
            pairs += [
                ("First bad record", output.text_or_dash(report.get("first_bad_seq"))),
                ("Problem", output.text_or_dash(report.get("problem"))),
            ]
        pairs.append(
            ("Checkpoint public key", output.text_or_dash(report.get("checkpoint_public_key")))
        )
        output.print_fields(pairs)
    if not ok:
        if not state.json_output:
            seq = report.get("first_bad_seq")
            where = f" at record {seq}" if seq is not None else ""
            output.note(f"error: the audit chain is not intact{where}: {report.get('problem')}")
        raise typer.Exit(EXIT_FAILED)


@app.command("checkpoint")
def checkpoint(ctx: typer.Context) -> None:
    """Write a signed checkpoint (record count and head hash) now."""
    state = app_state(ctx)
    with state.client() as client:
        written = client.post("/api/v1/audit/checkpoint")
    if state.json_output:
        output.emit_json(written)
        return
    output.print_fields(
        [
            ("Records", output.text_or_dash(written.get("count"))),
            ("Head hash", output.text_or_dash(written.get("head_hash"))),
            ("Time", output.format_time(written.get("time"))),
            ("Signature", output.text_or_dash(written.get("signature"))),
            ("Checkpoint public key", output.text_or_dash(written.get("checkpoint_public_key"))),
        ]
    )
