"""`corral role`: create, list, show, update and delete roles (policies in JSON or YAML).

A policy file is read and parsed here only far enough to send it as an object: a file
that is neither JSON nor YAML, or not an object, is a usage error naming the file
(exit 2). The server validates the policy itself; its error, with the `field` to
blame (e.g. `statements[0].actions`), reaches the user unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
import yaml

from corral.cli import output
from corral.cli.client import CliError
from corral.cli.state import app_state

app = typer.Typer(help="Manage roles: named policies that users hold and grants confer.")

_COLUMNS = ["NAME", "KIND", "STATEMENTS", "DESCRIPTION", "UPDATED"]


def role_path(name: str) -> str:
    """The API path of one role."""
    return f"/api/v1/roles/{quote(name, safe='')}"


def parse_policy_text(text: str, source: str) -> dict[str, Any]:
    """Parse a policy file's text (JSON, else YAML) into an object; CliError otherwise."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise CliError(
                f"policy file {source} is neither valid JSON nor valid YAML", field="policy"
            ) from exc
    if not isinstance(value, dict):
        raise CliError(
            f"policy file {source} must contain an object (with a 'statements' list)",
            field="policy",
        )
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise CliError(
            f"policy file {source} holds values JSON cannot represent (quote dates and the like)",
            field="policy",
        ) from exc
    return value


def load_policy(path: Path) -> dict[str, Any]:
    """Read and parse a `--policy FILE`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read policy file {path}: {exc.strerror}", field="policy") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"policy file {path} is not UTF-8 text", field="policy") from exc
    return parse_policy_text(text, str(path))


def _kind(role: dict[str, Any]) -> str:
    if not role.get("builtin"):
        return "custom"
    return "built-in" if role.get("editable") is False else "built-in (editable)"


def _statement_count(role: dict[str, Any]) -> str:
    policy = role.get("policy")
    statements = policy.get("statements") if isinstance(policy, dict) else None
    return str(len(statements)) if isinstance(statements, list) else "-"


def _row(role: dict[str, Any]) -> list[str]:
    return [
        str(role.get("name", "")),
        _kind(role),
        _statement_count(role),
        output.text_or_dash(role.get("description")),
        output.format_time(role.get("updated_at")),
    ]


def policy_yaml(policy: Any) -> str:
    """A policy as block YAML, keys in the server's order."""
    return yaml.safe_dump(policy, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _show(role: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(role)
        return
    output.print_fields(
        [
            ("Name", str(role.get("name"))),
            ("Kind", _kind(role)),
            ("Description", output.text_or_dash(role.get("description"))),
            ("Created", output.format_time(role.get("created_at"))),
            ("Updated", output.format_time(role.get("updated_at"))),
        ]
    )
    output.write_raw("\nPolicy:\n" + policy_yaml(role.get("policy") or {}))


PolicyOption = Annotated[
    Path, typer.Option("--policy", "-p", help="Policy file (JSON or YAML) with `statements`.")
]


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Role name (letters, digits, . _ -).")],
    policy: PolicyOption,
) -> None:
    """Create a role from a policy file (its `description` key describes the role)."""
    state = app_state(ctx)
    body = {"name": name, "policy": load_policy(policy)}
    with state.client() as client:
        role = client.post("/api/v1/roles", body)
    if not state.json_output:
        output.note(f"Created role {name}.")
    _show(role, state.json_output)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List roles."""
    state = app_state(ctx)
    with state.client() as client:
        roles = client.get("/api/v1/roles")
    if state.json_output:
        output.emit_json(roles)
        return
    output.print_table(_COLUMNS, [_row(role) for role in roles])


@app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Role name.")]) -> None:
    """Show a role and its policy (as YAML)."""
    state = app_state(ctx)
    with state.client() as client:
        role = client.get(role_path(name))
    _show(role, state.json_output)


@app.command("update")
def update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Role name.")],
    policy: PolicyOption,
) -> None:
    """Replace a role's policy (admin, operator, viewer and auditor are fixed)."""
    state = app_state(ctx)
    body = {"policy": load_policy(policy)}
    with state.client() as client:
        role = client.put(role_path(name), body)
    if not state.json_output:
        output.note(f"Updated role {name}.")
    _show(role, state.json_output)


@app.command("delete")
def delete(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Role name.")]) -> None:
    """Delete a custom role that no user holds."""
    state = app_state(ctx)
    with state.client() as client:
        client.delete(role_path(name))
    if state.json_output:
        output.emit_json({"name": name, "deleted": True})
    else:
        output.note(f"Deleted role {name}.")
