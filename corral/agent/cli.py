"""`corral agent ...`: register a node and run the agent (argparse; no heavy imports)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from corral.agent.options import ENV_VARS, AgentOptions
from corral.errors import (
    AuthError,
    ConflictError,
    CorralError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)

logger = logging.getLogger(__name__)

EXIT_CODES: tuple[tuple[type[CorralError], int], ...] = (
    (ValidationError, 2),
    (ConflictError, 2),
    (NotFoundError, 3),
    (AuthError, 4),
    (UnavailableError, 5),
)


OPTION_HELP: dict[str, str] = {
    "backoff_base": "first reconnect backoff ceiling",
    "backoff_cap": "largest reconnect wait",
    "output_poll": "how often output is tailed and deadlines checked",
    "kill_grace": "SIGTERM to SIGKILL delay when killing a worker",
    "connect_timeout": "WebSocket open/close timeout",
    "journal_retention": "how long accepted command ids are remembered",
    "cleanup_delay": "idle time before acknowledged invocations' files are removed",
}


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"tag must be KEY=VALUE, not {text!r}")
    return key, value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def build_parser() -> argparse.ArgumentParser:
    """The `corral agent` argument parser."""
    parser = argparse.ArgumentParser(
        prog="corral agent", description="The Corral agent: register this node, then run."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register this node with an activation")
    reg.add_argument("--server", required=True, help="server URL, e.g. https://corral:8443")
    reg.add_argument("--activation-id", required=True)
    reg.add_argument(
        "--activation-code",
        default=os.environ.get("CORRAL_ACTIVATION_CODE"),
        help="activation code (default: $CORRAL_ACTIVATION_CODE)",
    )
    reg.add_argument("--state-dir", required=True, type=Path)
    reg.add_argument("--tag", action="append", type=_tag, default=[], metavar="KEY=VALUE")
    reg.add_argument("--force", action="store_true", help="replace an existing registration")
    reg.add_argument(
        "--ca-fingerprint",
        metavar="sha256:HEX",
        help="pin the server's CA (printed by `corral activation create`)",
    )
    reg.add_argument(
        "--ca-file",
        type=Path,
        default=_env_path("CORRAL_AGENT_CA_FILE"),
        help="trust the CA certificates in FILE, host names checked (env CORRAL_AGENT_CA_FILE)",
    )
    reg.add_argument("-o", "--output", choices=["text", "json"], default="text")
    run = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    run.add_argument("--state-dir", required=True, type=Path)
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument(
        "--ca-file",
        type=Path,
        default=_env_path("CORRAL_AGENT_CA_FILE"),
        help="trust these CA certificates instead of the stored ones (env CORRAL_AGENT_CA_FILE)",
    )
    param = sub.add_parser("param", help="read Parameter Store values as this node")
    param_sub = param.add_subparsers(dest="param_command", required=True)
    pget = param_sub.add_parser(
        "get", help="print a parameter's value (NAME, NAME:VERSION or NAME:LABEL)"
    )
    pget.add_argument("name")
    pget.add_argument("--decrypt", action="store_true", help="decrypt a SecureString")
    pget.add_argument("--state-dir", required=True, type=Path)
    pget.add_argument("-o", "--output", choices=["text", "json"], default="text")
    who = sub.add_parser("whoami", help="ask the server who this node is (a signed request)")
    who.add_argument("--state-dir", required=True, type=Path)
    who.add_argument("-o", "--output", choices=["text", "json"], default="text")
    for name, var in ENV_VARS.items():
        run.add_argument(
            "--" + name.replace("_", "-"),
            type=_seconds,
            default=None,
            metavar="SECONDS",
            help=f"{OPTION_HELP[name]} (env {var}; default {getattr(AgentOptions(), name):.10g})",
        )
    return parser


def main(argv: list[str]) -> int:
    """Run `corral agent ARGV`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "register":
        return _register(args)
    if args.command == "whoami":
        return _whoami(args)
    if args.command == "param":
        return _param_get(args)
    return _run(args)


def _param_get(args: argparse.Namespace) -> int:
    import urllib.parse

    from corral.agent.api import call
    from corral.agent.identity import load_identity

    as_json = args.output == "json"
    query = urllib.parse.urlencode({"name": args.name, "decrypt": str(args.decrypt).lower()})
    try:
        reply = call(load_identity(args.state_dir), "GET", f"/api/v1/parameters/value?{query}")
    except CorralError as exc:
        return _fail(exc, as_json)
    if as_json:
        print(json.dumps(reply, indent=2))  # noqa: T201 - the command's output
    else:
        print(reply.get("value"))  # noqa: T201 - the value, for scripts: VALUE=$(...)
    return 0


def _whoami(args: argparse.Namespace) -> int:
    from corral.agent.api import call
    from corral.agent.identity import load_identity

    as_json = args.output == "json"
    try:
        reply = call(load_identity(args.state_dir), "GET", "/api/v1/whoami")
    except CorralError as exc:
        return _fail(exc, as_json)
    if as_json:
        print(json.dumps(reply, indent=2))  # noqa: T201 - the command's output
    else:
        node = reply.get("node") if isinstance(reply.get("node"), dict) else {}
        tags = node.get("tags", {}) if isinstance(node, dict) else {}
        roles = reply.get("roles", [])
        print(f"principal: {reply.get('principal')}")  # noqa: T201
        print(f"roles:     {', '.join(str(r) for r in roles) if isinstance(roles, list) else ''}")  # noqa: T201
        print(f"tags:      {json.dumps(tags)}")  # noqa: T201
    return 0


def _fail(exc: CorralError, as_json: bool) -> int:
    code = next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), 1)
    if as_json:
        error = {
            "type": type(exc).__name__,
            "message": exc.message,
            "field": getattr(exc, "field", None),
        }
        sys.stderr.write(json.dumps({"error": error}) + "\n")
    else:
        sys.stderr.write(f"error: {exc.message}\n")
    return code


def _register(args: argparse.Namespace) -> int:
    from corral.agent.register import TrustRequest, register

    as_json = args.output == "json"
    if not args.activation_code:
        return _fail(
            ValidationError("--activation-code (or $CORRAL_ACTIVATION_CODE) is required"),
            as_json,
        )
    try:
        done = register(
            args.server,
            args.activation_id,
            args.activation_code,
            args.state_dir,
            dict(args.tag),
            force=args.force,
            trust_request=TrustRequest(args.ca_fingerprint, args.ca_file),
        )
    except CorralError as exc:
        return _fail(exc, as_json)
    except OSError as exc:
        return _fail(ValidationError(f"cannot write {args.state_dir}: {exc.strerror}"), as_json)
    if as_json:
        sys.stdout.write(
            json.dumps({"node_id": done.node_id, "state_dir": str(done.state_dir)}) + "\n"
        )
    else:
        sys.stdout.write(done.node_id + "\n")
    return 0


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        options = AgentOptions.from_env(**{name: getattr(args, name) for name in ENV_VARS})
    except ValueError as exc:
        return _fail(ValidationError(str(exc)), False)
    try:
        asyncio.run(_serve(args.state_dir, options, args.ca_file))
    except CorralError as exc:
        return _fail(exc, False)
    return 0


async def _serve(state_dir: Path, options: AgentOptions, ca_file: Path | None) -> None:
    from corral.agent.connection import Agent

    agent = Agent(state_dir, options, ca_file=ca_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def stopper() -> None:
        await stop.wait()
        logger.info("shutting down; running workers keep running")
        await agent.stop()

    stopping = asyncio.create_task(stopper())
    try:
        await agent.run()
    finally:
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
