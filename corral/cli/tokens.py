"""`corral token`: create, list and revoke API tokens and AWS credentials (yours, or others')."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.client import CliError
from corral.cli.state import app_state
from corral.cli.values import parse_duration

app = typer.Typer(help="Create, list and revoke API tokens.")

# PREFIX/KEY ID: a token's first characters, or the access key id of AWS credentials.
_COLUMNS = ["TOKEN ID", "USER", "PREFIX/KEY ID", "STATUS", "EXPIRES", "LAST USED", "DESCRIPTION"]


def token_status(token: dict[str, Any]) -> str:
    """`revoked`, `expired` or `active`."""
    if token.get("revoked"):
        return "revoked"
    if token.get("expired"):
        return "expired"
    return "active"


def _expires(token: dict[str, Any]) -> str:
    return "never" if not token.get("expires_at") else output.format_time(token["expires_at"])


def _row(token: dict[str, Any]) -> list[str]:
    return [
        str(token.get("token_id", "")),
        output.text_or_dash(token.get("user")),
        output.text_or_dash(token.get("access_key_id") or token.get("prefix")),
        token_status(token),
        _expires(token),
        output.format_ago(token.get("last_used_at")),
        output.text_or_dash(token.get("description")),
    ]


@app.command("create")
def create(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option("--user", help="Whose token (default: your own user).")
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime: 30d, 24h (default: none).")
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="Free text.")] = None,
    aws_credentials: Annotated[
        bool,
        typer.Option(
            "--aws-credentials",
            help="Issue an AWS access key id and secret access key (for boto3, the AWS CLI "
            "and Terraform on the Systems Manager API) instead of a token.",
        ),
    ] = False,
) -> None:
    """Create an API token (or AWS credentials); the secret is shown only once."""
    state = app_state(ctx)
    body: dict[str, Any] = {}
    if aws_credentials:
        body["aws_credentials"] = True
    if user is not None:
        body["user"] = user
    if expires is not None:
        body["expires_seconds"] = round(parse_duration(expires, "expires"))
    if description is not None:
        body["description"] = description
    with state.client() as client:
        created = client.post("/api/v1/tokens", body)
    if state.json_output:
        output.emit_json(created)
        return
    fields = [
        ("Token ID", str(created.get("token_id"))),
        ("User", output.text_or_dash(created.get("user"))),
        ("Description", output.text_or_dash(created.get("description"))),
        ("Expires", _expires(created)),
    ]
    if aws_credentials:
        fields += [
            ("Access key ID", str(created.get("access_key_id"))),
            ("Secret access key", str(created.get("secret_access_key"))),
        ]
        output.print_fields(fields)
        output.note(
            "The secret access key is shown only once; store it now. Point AWS tools at this "
            "server with AWS_ENDPOINT_URL_SSM (see docs/ssm-api.md)."
        )
        return
    output.print_fields([*fields, ("Token", str(created.get("token")))])
    output.note("The token is shown only once; store it now.")


@app.command("list")
def list_(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option("--user", help="Tokens of this user (default: your own).")
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all", help="Tokens of every user you may see.")
    ] = False,
) -> None:
    """List API tokens (metadata only; a token's secret is never shown again)."""
    state = app_state(ctx)
    if user is not None and all_users:
        raise CliError("use either --user or --all, not both", field="all")
    params: dict[str, str] = {}
    if user is not None:
        params["user"] = user
    if all_users:
        params["all"] = "true"
    with state.client() as client:
        tokens = client.get("/api/v1/tokens", params=params or None)
    if state.json_output:
        output.emit_json(tokens)
        return
    output.print_table(_COLUMNS, [_row(token) for token in tokens])


@app.command("revoke")
def revoke(ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="Token id.")]) -> None:
    """Revoke a token now; requests and open streams using it stop."""
    state = app_state(ctx)
    with state.client() as client:
        token = client.delete(f"/api/v1/tokens/{quote(token_id, safe='')}")
    if state.json_output:
        output.emit_json(token)
    else:
        owner = token.get("user") if isinstance(token, dict) else None
        output.note(f"Revoked token {token_id}" + (f" of user {owner}." if owner else "."))
