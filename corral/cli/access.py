"""`corral access`: just-in-time access requests, their approval, and their evidence.

A user requests a role on target nodes for a duration with a reason; an approver
(`access:Approve` on the role for every target node) approves or denies it; an
approved request is a grant until it expires or is revoked. `access evidence` prints
the server's evidence document (the request, its decisions and every audited action
linked to it) as JSON, always.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.state import app_state
from corral.cli.values import parse_duration, validate_targets
from corral.cli.whoami import format_remaining
from corral.errors import ValidationError

app = typer.Typer(help="Request, approve, deny and revoke just-in-time access to nodes.")

STATUSES = ("pending", "approved", "denied", "revoked", "expired")
_COLUMNS = ["REQUEST ID", "STATUS", "REQUESTER", "ROLE", "TARGETS", "DURATION", "EXPIRES", "REASON"]
_BASE = "/api/v1/access/requests"


def request_path(request_id: str) -> str:
    """The API path of one access request."""
    return f"{_BASE}/{quote(request_id, safe='')}"


def _targets(value: Any) -> str:
    if not isinstance(value, list) or not value:
        return "-"
    return " ".join(str(target) for target in value)


def _duration(value: Any) -> str:
    return format_remaining(value) if isinstance(value, int | float) else "-"


def _expires(request: dict[str, Any]) -> str:
    expires_at = request.get("expires_at")
    if not expires_at:
        return "-"
    if request.get("status") == "approved":
        return f"{output.format_time(expires_at)} ({output.format_ago(expires_at)})"
    return output.format_time(expires_at)


def _row(request: dict[str, Any]) -> list[str]:
    return [
        str(request.get("request_id", "")),
        output.text_or_dash(request.get("status")),
        output.text_or_dash(request.get("requester")),
        output.text_or_dash(request.get("role")),
        _targets(request.get("targets")),
        _duration(request.get("duration_seconds")),
        _expires(request),
        output.text_or_dash(request.get("reason")),
    ]


def _show(request: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(request)
        return
    pairs = [
        ("Request ID", str(request.get("request_id"))),
        ("Status", output.text_or_dash(request.get("status"))),
        ("Requester", output.text_or_dash(request.get("requester"))),
        ("Role", output.text_or_dash(request.get("role"))),
        ("Targets", _targets(request.get("targets"))),
        ("Duration", _duration(request.get("duration_seconds"))),
        ("Reason", output.text_or_dash(request.get("reason"))),
        ("Requested", output.format_time(request.get("created_at"))),
    ]
    if request.get("decided_at"):
        pairs += [
            ("Decided", output.format_time(request.get("decided_at"))),
            ("Decided by", output.text_or_dash(request.get("decided_by"))),
            ("Comment", output.text_or_dash(request.get("comment"))),
        ]
    if request.get("expires_at"):
        pairs.append(("Expires", _expires(request)))
    if request.get("revoked_at"):
        pairs += [
            ("Revoked", output.format_time(request.get("revoked_at"))),
            ("Revoked by", output.text_or_dash(request.get("revoked_by"))),
        ]
    output.print_fields(pairs)


@app.command("request")
def request(
    ctx: typer.Context,
    targets: Annotated[
        list[str],
        typer.Option("--targets", "-t", help="Node id, tag:KEY=V1,V2 or all (repeatable)."),
    ],
    role: Annotated[str, typer.Option("--role", help="The role to be granted on the targets.")],
    duration: Annotated[
        str, typer.Option("--duration", help="How long the grant lasts once approved (e.g. 1h).")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why you need it (for approvers).")],
) -> None:
    """Ask for a role on target nodes for a while; approvers are asked unless auto-approved."""
    state = app_state(ctx)
    if not reason.strip():
        raise ValidationError("--reason must not be empty", field="reason")
    body = {
        "targets": validate_targets(targets),
        "role": role,
        "duration_seconds": round(parse_duration(duration, "duration")),
        "reason": reason,
    }
    with state.client() as client:
        created = client.post(_BASE, body)
    _show(created, state.json_output)
    if not state.json_output:
        request_id = created.get("request_id")
        if created.get("status") == "pending":
            output.note(
                f"Waiting for approval; an approver runs: corral access approve {request_id}"
            )
        elif created.get("status") == "approved":
            output.note("Approved at once by an auto-approval rule; the grant is active.")


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only: pending, approved, denied, revoked or expired."),
    ] = None,
    mine: Annotated[bool, typer.Option("--mine", help="Only your own requests.")] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="At most this many (newest first).")
    ] = 100,
) -> None:
    """List access requests you may see (yours, and those you may approve or read)."""
    state = app_state(ctx)
    if status is not None and status not in STATUSES:
        raise ValidationError(
            f"invalid --status {status!r}: use one of {', '.join(STATUSES)}", field="status"
        )
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status
    if mine:
        params["mine"] = "true"
    with state.client() as client:
        requests = client.get(_BASE, params=params)
    if state.json_output:
        output.emit_json(requests)
        return
    output.print_table(_COLUMNS, [_row(item) for item in requests])


RequestId = Annotated[str, typer.Argument(help="Access request id.")]
CommentOption = Annotated[
    str | None, typer.Option("--comment", help="Note recorded with the decision.")
]


@app.command("show")
def show(ctx: typer.Context, request_id: RequestId) -> None:
    """Show one access request."""
    state = app_state(ctx)
    with state.client() as client:
        found = client.get(request_path(request_id))
    _show(found, state.json_output)


def _decide(ctx: typer.Context, request_id: str, verb: str, comment: str | None) -> None:
    state = app_state(ctx)
    body = {"comment": comment} if comment is not None else None
    with state.client() as client:
        decided = client.post(f"{request_path(request_id)}/{verb}", body)
    if not state.json_output:
        output.note(f"Access request {request_id}: {decided.get('status')}.")
    _show(decided, state.json_output)


@app.command("approve")
def approve(ctx: typer.Context, request_id: RequestId, comment: CommentOption = None) -> None:
    """Approve a pending request: the grant starts now and lasts its duration."""
    _decide(ctx, request_id, "approve", comment)


@app.command("deny")
def deny(ctx: typer.Context, request_id: RequestId, comment: CommentOption = None) -> None:
    """Deny a pending request."""
    _decide(ctx, request_id, "deny", comment)


@app.command("revoke")
def revoke(ctx: typer.Context, request_id: RequestId) -> None:
    """End a grant now (or withdraw a pending request)."""
    _decide(ctx, request_id, "revoke", None)


@app.command("evidence")
def evidence(ctx: typer.Context, request_id: RequestId) -> None:
    """Print the request, its decisions and every action taken under it, as JSON (always)."""
    state = app_state(ctx)
    with state.client() as client:
        document = client.get(f"{request_path(request_id)}/evidence")
    output.emit_json(document)
