"""`corral user`: create, list, show, disable, enable, delete users and set their roles."""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.client import EXIT_FAILED, CliError
from corral.cli.state import app_state
from corral.cli.values import parse_duration

app = typer.Typer(help="Manage users: their roles, and whether they may sign in.")

_COLUMNS = ["NAME", "ROLES", "STATUS", "CREATED", "UPDATED"]


def user_path(name: str) -> str:
    """The API path of one user."""
    return f"/api/v1/users/{quote(name, safe='')}"


def _status(user: dict[str, Any]) -> str:
    return "disabled" if user.get("disabled") else "active"


def _roles(value: Any) -> str:
    if not isinstance(value, list) or not value:
        return "-"
    return ", ".join(str(role) for role in value)


def _row(user: dict[str, Any]) -> list[str]:
    return [
        str(user.get("name", "")),
        _roles(user.get("roles")),
        _status(user),
        output.format_time(user.get("created_at")),
        output.format_time(user.get("updated_at")),
    ]


def _show(user: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json(user)
        return
    output.print_fields(
        [
            ("Name", str(user.get("name"))),
            ("Roles", _roles(user.get("roles"))),
            ("Status", _status(user)),
            ("Created", output.format_time(user.get("created_at"))),
            ("Updated", output.format_time(user.get("updated_at"))),
        ]
    )


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name (lowercase letters, digits, . _ @ -).")],
    role: Annotated[list[str], typer.Option("--role", "-r", help="A role to give (repeatable).")],
    token_expires: Annotated[
        str | None,
        typer.Option(
            "--token-expires", help="Lifetime of the first token: 30d, 24h (default: none)."
        ),
    ] = None,
    token_description: Annotated[
        str | None, typer.Option("--token-description", help="Description of the first token.")
    ] = None,
) -> None:
    """Create a user with its first API token (the token is shown only once)."""
    state = app_state(ctx)
    body: dict[str, Any] = {"name": name, "roles": list(role)}
    if token_expires is not None:
        body["token_expires_seconds"] = round(parse_duration(token_expires, "token_expires"))
    if token_description is not None:
        body["token_description"] = token_description
    with state.client() as client:
        created = client.post("/api/v1/users", body)
    if state.json_output:
        output.emit_json(created)
        return
    output.print_fields(
        [
            ("Name", str(created.get("name"))),
            ("Roles", _roles(created.get("roles"))),
            ("Token ID", output.text_or_dash(created.get("token_id"))),
            ("Token", str(created.get("token"))),
        ]
    )
    output.note("The token is shown only once; store it now (e.g. `corral login --token ...`).")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List users."""
    state = app_state(ctx)
    with state.client() as client:
        users = client.get("/api/v1/users")
    if state.json_output:
        output.emit_json(users)
        return
    output.print_table(_COLUMNS, [_row(user) for user in users])


@app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Show one user."""
    state = app_state(ctx)
    with state.client() as client:
        user = client.get(user_path(name))
    _show(user, state.json_output)


def _patch(ctx: typer.Context, name: str, body: dict[str, Any], done: str) -> None:
    state = app_state(ctx)
    with state.client() as client:
        user = client.patch(user_path(name), body)
    if not state.json_output:
        output.note(done)
    _show(user, state.json_output)


@app.command("disable")
def disable(ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Disable a user: its tokens stop working and its open streams end."""
    _patch(ctx, name, {"disabled": True}, f"Disabled user {name}.")


@app.command("enable")
def enable(ctx: typer.Context, name: Annotated[str, typer.Argument(help="User name.")]) -> None:
    """Enable a disabled user again."""
    _patch(ctx, name, {"disabled": False}, f"Enabled user {name}.")


@app.command("set-roles")
def set_roles(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[
        list[str], typer.Option("--role", "-r", help="A role the user holds (repeatable).")
    ],
) -> None:
    """Replace a user's roles with the given ones."""
    _patch(ctx, name, {"roles": list(role)}, f"Set the roles of user {name}.")


def confirm_or_fail(question: str, what: str) -> None:
    """Ask on a terminal (prompt on stderr); without one, insist on --yes (exit 2)."""
    if not sys.stdin.isatty():
        raise CliError(f"{what} needs --yes when stdin is not a terminal", field="yes")
    # Not typer.confirm: click's prompt writes to stdout, which must stay clean.
    sys.stderr.write(f"{question} [y/N]: ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError(
            f"{what} was not confirmed; nothing changed",
            type_="AbortedError",
            exit_code=EXIT_FAILED,
        )


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="User name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a user; its tokens are revoked and its open streams end."""
    state = app_state(ctx)
    if not yes:
        confirm_or_fail(f"Delete user {name} and revoke its tokens?", f"deleting user {name}")
    with state.client() as client:
        client.delete(user_path(name))
    if state.json_output:
        output.emit_json({"name": name, "deleted": True})
    else:
        output.note(f"Deleted user {name}.")
