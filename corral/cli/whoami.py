"""`corral whoami`: the calling principal, its roles and its active just-in-time grants."""

from __future__ import annotations

from typing import Any

import typer

from corral.cli import output
from corral.cli.state import app_state

_GRANT_COLUMNS = ["GRANT (REQUEST ID)", "ROLE", "TARGETS", "EXPIRES", "REMAINING"]


def format_remaining(seconds: Any) -> str:
    """Render remaining seconds as `1h 5m`, `4m 10s`, `2d 3h` (or `-`)."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    left = max(0, int(seconds))
    days, rest = divmod(left, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return " ".join(shown[:2]) or "0s"


def grant_row(grant: dict[str, Any]) -> list[str]:
    """One row of the grants table."""
    targets = grant.get("targets")
    return [
        str(grant.get("request_id", "")),
        output.text_or_dash(grant.get("role")),
        " ".join(str(t) for t in targets) if isinstance(targets, list) and targets else "-",
        output.format_time(grant.get("expires_at")),
        format_remaining(grant.get("remaining_seconds")),
    ]


def whoami(ctx: typer.Context) -> None:
    """Show who you are: principal, roles and active grants (with time remaining)."""
    state = app_state(ctx)
    with state.client() as client:
        me = client.get("/api/v1/whoami")
    if state.json_output:
        output.emit_json(me)
        return
    roles = me.get("roles") or []
    pairs = [
        ("Principal", str(me.get("principal"))),
        ("Kind", output.text_or_dash(me.get("kind"))),
        ("Roles", ", ".join(str(role) for role in roles) or "-"),
        ("Token ID", output.text_or_dash(me.get("token_id"))),
    ]
    node = me.get("node")
    if isinstance(node, dict):
        pairs.append(("Node", output.text_or_dash(node.get("node_id"))))
        pairs.append(("Node tags", output.format_tags(node.get("tags"))))
    grants = [g for g in me.get("grants") or [] if isinstance(g, dict)]
    pairs.append(("Grants", str(len(grants)) if grants else "none"))
    output.print_fields(pairs)
    if grants:
        output.write_raw("\n")
        output.print_table(_GRANT_COLUMNS, [grant_row(grant) for grant in grants])
