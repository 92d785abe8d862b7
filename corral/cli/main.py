"""The operator CLI: the Typer app, argv preprocessing and global options.

`-o json` / `--output json` may appear anywhere on the command line; it is lifted out
of argv before Typer parses it. Every `CliError` and usage error is rendered here, in
one place, with the exit codes of docs/cli.md.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated

import typer

from corral.cli import (
    access,
    activation,
    audit,
    commands,
    documents,
    keys,
    nodes,
    output,
    params,
    roles,
    sessions,
    tokens,
    users,
)
from corral.cli.client import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError
from corral.cli.cp import cp
from corral.cli.login import login
from corral.cli.run import run
from corral.cli.server import server
from corral.cli.state import AppState
from corral.cli.values import extract_global_options, extract_output_option, parse_duration
from corral.cli.whoami import whoami
from corral.errors import ValidationError

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="corral",
    help="Corral: self-hosted fleet operations (server, agent and operator CLI).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(activation.app, name="activation")
app.add_typer(nodes.app, name="nodes")
app.add_typer(documents.app, name="doc")
app.add_typer(commands.app, name="commands")
app.command("run")(run)
app.command("login")(login)
app.command("server")(server)
app.add_typer(users.app, name="user")
app.add_typer(tokens.app, name="token")
app.add_typer(roles.app, name="role")
app.command("whoami")(whoami)
app.add_typer(audit.app, name="audit")
app.add_typer(access.app, name="access")
app.add_typer(sessions.app, name="session")
app.command("cp")(cp)
app.add_typer(params.app, name="param")
app.add_typer(keys.app, name="key")


@app.command(
    "agent",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def agent(ctx: typer.Context) -> None:
    """Run or manage the node agent (`corral agent --help` for its commands)."""
    try:
        agent_cli = importlib.import_module("corral.agent.cli")
    except ImportError as exc:
        raise CliError("the corral agent is not installed here", exit_code=EXIT_FAILED) from exc
    raise typer.Exit(agent_cli.main(list(ctx.args)) or 0)


@app.callback()
def root(
    ctx: typer.Context,
    output_format: Annotated[
        str,
        typer.Option("--output", "-o", help="Output format: table or json (anywhere on the line)."),
    ] = "table",
    server_url: Annotated[
        str | None, typer.Option("--server", help="Server URL (env CORRAL_SERVER).")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="API token (env CORRAL_TOKEN).")
    ] = None,
    ca_file: Annotated[
        str | None, typer.Option("--ca-file", help="CA bundle (env CORRAL_CA_FILE).")
    ] = None,
) -> None:
    """Corral operator command line."""
    if output_format not in ("table", "text", "json"):
        raise typer.BadParameter("use table or json", param_hint="--output")
    ctx.obj = AppState(
        json_output=output_format == "json",
        server=server_url,
        token=token,
        ca_file=ca_file,
        http_timeout_seconds=parse_duration(
            os.environ.get("CORRAL_HTTP_TIMEOUT") or "30", "CORRAL_HTTP_TIMEOUT"
        ),
    )


def run_cli(argv: list[str]) -> int:
    """Run the CLI on argv and return the exit code (never raises SystemExit)."""
    if argv[:1] == ["agent"]:
        # The agent parses its own command line; leave it untouched.
        args, fmt = list(argv), None
        global_options: list[str] = []
    else:
        args, fmt = extract_output_option(argv)
        args, global_options = extract_global_options(args)
    as_json = fmt == "json"
    if fmt is not None:
        global_options = ["--output", fmt, *global_options]
    try:
        result = app(args=[*global_options, *args], prog_name="corral", standalone_mode=False)
    except CliError as exc:
        output.render_error(exc, as_json)
        return exc.exit_code
    except ValidationError as exc:
        output.render_error(CliError(exc.message, field=exc.field), as_json)
        return EXIT_USAGE
    except typer.Exit as exc:
        return int(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:
        # Typer's own usage errors (bad flag, missing argument, bad value).
        exit_code = int(getattr(exc, "exit_code", EXIT_USAGE))
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if as_json or not hasattr(exc, "show"):
            output.render_error(CliError(message, exit_code=exit_code), as_json)
        else:
            exc.show()
        return exit_code
    except BrokenPipeError:
        # The reader went away (`corral ... | head`); there is nobody left to tell.
        _silence_stdout()
        return EXIT_FAILED
    except OSError as exc:
        error = CliError(str(exc), type_="InternalError", exit_code=EXIT_FAILED)
        output.render_error(error, as_json)
        return EXIT_FAILED
    return result if isinstance(result, int) else 0


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        logger.debug("could not redirect stdout after a broken pipe")


def main() -> None:
    """Entry point used by `corral` (see corral/__main__.py)."""
    sys.exit(run_cli(sys.argv[1:]))
