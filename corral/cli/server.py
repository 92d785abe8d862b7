"""`corral server`: start the Corral server in this process."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Annotated

import typer

from corral.cli.values import parse_duration, parse_listen
from corral.errors import ValidationError
from corral.server.config import ServerConfig

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_TLS_MODES = ("auto", "on", "off")


MAX_SESSION_IDLE_SECONDS = 3600.0
MAX_SESSION_DURATION_SECONDS = 24 * 3600.0


def _session_options(
    config: ServerConfig, idle: str | None, max_duration: str | None, grace: str | None
) -> ServerConfig:
    """Apply the --session-* durations, each checked against its limit."""

    def seconds(name: str, text: str, ceiling: float) -> float:
        value = parse_duration(text, name)
        if value > ceiling:
            option = "--" + name.replace("_", "-")
            raise ValidationError(f"{option} may be at most {ceiling:g} seconds", field=name)
        return value

    if idle is not None:
        value = seconds("session_idle_timeout", idle, MAX_SESSION_IDLE_SECONDS)
        config = dataclasses.replace(config, session_idle_timeout_seconds=value or None)
    if max_duration is not None:
        value = seconds("session_max_duration", max_duration, MAX_SESSION_DURATION_SECONDS)
        config = dataclasses.replace(config, session_max_duration_seconds=value or None)
    if grace is not None:
        value = seconds("session_resume_grace", grace, MAX_SESSION_DURATION_SECONDS)
        config = dataclasses.replace(config, session_resume_grace_seconds=value)
    return config


MAX_SHELL_PROFILE_BYTES = 16 * 1024


def read_shell_profile(path: Path) -> str:
    """The text of --session-shell-profile, checked: UTF-8, no NUL, at most 16 KiB."""
    field = "session_shell_profile"
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValidationError(
            f"--session-shell-profile: cannot read {path}: {error.strerror}", field=field
        ) from None
    if len(raw) > MAX_SHELL_PROFILE_BYTES:
        raise ValidationError(
            f"--session-shell-profile: {path} has {len(raw)} bytes, more than"
            f" {MAX_SHELL_PROFILE_BYTES}",
            field=field,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(
            f"--session-shell-profile: {path} is not UTF-8 text", field=field
        ) from None
    if "\0" in text:
        raise ValidationError(f"--session-shell-profile: {path} contains NUL", field=field)
    return text


def build_config(
    data_dir: Path,
    listen: str,
    database_url: str | None,
    heartbeat: str | None,
    log_level: str,
) -> ServerConfig:
    """The ServerConfig described by `corral server`'s options."""
    host, port = parse_listen(listen)
    config = ServerConfig(
        data_dir=data_dir,
        host=host,
        port=port,
        database_url=database_url,
        log_level=log_level.lower(),
    )
    if heartbeat is not None:
        seconds = parse_duration(heartbeat, "heartbeat")
        # An agent is only declared lost after several missed heartbeats.
        config = dataclasses.replace(
            config,
            heartbeat_seconds=seconds,
            connection_lost_seconds=max(config.connection_lost_seconds, 3 * seconds),
        )
    return config


def server(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", help="Server data directory.")
    ],
    listen: Annotated[
        str, typer.Option("--listen", envvar="CORRAL_LISTEN", help="HOST:PORT to listen on.")
    ] = "127.0.0.1:8443",
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="CORRAL_DATABASE_URL",
            help="postgresql://... (default: SQLite in the data directory).",
        ),
    ] = None,
    heartbeat: Annotated[
        str | None, typer.Option("--heartbeat", help="Agent heartbeat interval (e.g. 30s).")
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info or debug.")
    ] = "info",
    tls: Annotated[
        str,
        typer.Option(
            "--tls",
            envvar="CORRAL_TLS",
            help="auto (HTTPS unless listening on loopback), on or off.",
        ),
    ] = "auto",
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            "--tls-cert",
            envvar="CORRAL_TLS_CERT",
            help="Server certificate (PEM; chain after it). Default: generated.",
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option("--tls-key", envvar="CORRAL_TLS_KEY", help="Key of --tls-cert (PEM)."),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(
            "--tls-ca",
            envvar="CORRAL_TLS_CA",
            help="CA that issued --tls-cert, published for agents to pin.",
        ),
    ] = None,
    tls_san: Annotated[
        list[str] | None,
        typer.Option(
            "--tls-san", help="Extra DNS name or IP for the generated certificate (repeatable)."
        ),
    ] = None,
    audit_key_file: Annotated[
        Path | None,
        typer.Option(
            "--audit-key-file",
            envvar="CORRAL_AUDIT_KEY_FILE",
            help="Audit HMAC key file (default DATA_DIR/audit.key; $CORRAL_AUDIT_KEY overrides).",
        ),
    ] = None,
    audit_checkpoint_file: Annotated[
        Path | None,
        typer.Option(
            "--audit-checkpoint-file",
            help="Append-only file of signed audit checkpoints "
            "(default DATA_DIR/audit/checkpoints.jsonl).",
        ),
    ] = None,
    audit_checkpoint_interval: Annotated[
        str | None,
        typer.Option("--audit-checkpoint-interval", help="How often to sign a checkpoint (5m)."),
    ] = None,
    auth_failure_limit: Annotated[
        int | None,
        typer.Option(
            "--auth-failure-limit",
            min=1,
            help="Failed authentications from one address before it is locked out (20).",
        ),
    ] = None,
    auth_lockout: Annotated[
        str | None, typer.Option("--auth-lockout", help="How long a lockout lasts (60s).")
    ] = None,
    sigv4_max_skew: Annotated[
        str | None,
        typer.Option(
            "--sigv4-max-skew",
            help="Largest clock difference accepted on AWS SigV4-signed requests (5m).",
        ),
    ] = None,
    key_dir: Annotated[
        Path | None,
        typer.Option(
            "--key-dir",
            envvar="CORRAL_KEY_DIR",
            help="Directory of Parameter Store key-encryption keys (default DATA_DIR/keys).",
        ),
    ] = None,
    parameter_policy_interval: Annotated[
        str | None,
        typer.Option(
            "--parameter-policy-interval",
            help="How often parameter expiry and notifications are applied (60s).",
        ),
    ] = None,
    access_max_duration: Annotated[
        str | None,
        typer.Option("--access-max-duration", help="Longest just-in-time grant (24h)."),
    ] = None,
    ws_ping_interval: Annotated[
        str | None,
        typer.Option(
            "--ws-ping-interval",
            help="Ping every WebSocket this often; one silent as long again is closed"
            " (20s; 0: never).",
        ),
    ] = None,
    session_idle_timeout: Annotated[
        str | None,
        typer.Option(
            "--session-idle-timeout",
            help="End a shell session after this long without input or output (20m; 0: never;"
            " at most 1h).",
        ),
    ] = None,
    session_max_duration: Annotated[
        str | None,
        typer.Option(
            "--session-max-duration",
            help="End any session this long after it started (default: none; at most 24h).",
        ),
    ] = None,
    session_resume_grace: Annotated[
        str | None,
        typer.Option(
            "--session-resume-grace",
            help="How long a shell session waits for a dropped operator or node connection"
            " to come back (60s; 0: end at once).",
        ),
    ] = None,
    session_shell_profile: Annotated[
        Path | None,
        typer.Option(
            "--session-shell-profile",
            help="A file of shell commands every interactive session runs first"
            " (sourced; never echoed or recorded).",
        ),
    ] = None,
    session_record_input: Annotated[
        bool,
        typer.Option(
            "--session-record-input",
            help="Record what operators type too, not only what the shell prints.",
        ),
    ] = False,
) -> None:
    """Run the Corral server (HTTP API and agent endpoint) until interrupted."""
    if log_level.lower() not in _LOG_LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(_LOG_LEVELS)}", param_hint="--log-level")
    if tls.lower() not in _TLS_MODES:
        raise typer.BadParameter(f"use one of {', '.join(_TLS_MODES)}", param_hint="--tls")
    config = build_config(data_dir, listen, database_url, heartbeat, log_level)
    config = dataclasses.replace(
        config,
        tls=tls.lower(),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        tls_san=tuple(tls_san or ()),
        audit_key_file=audit_key_file,
        audit_checkpoint_file=audit_checkpoint_file,
        key_dir=key_dir,
    )
    if parameter_policy_interval is not None:
        seconds = parse_duration(parameter_policy_interval, "parameter_policy_interval")
        config = dataclasses.replace(config, parameter_policy_seconds=max(1.0, seconds))
    if audit_checkpoint_interval is not None:
        seconds = parse_duration(audit_checkpoint_interval, "audit_checkpoint_interval")
        config = dataclasses.replace(config, audit_checkpoint_seconds=max(1.0, seconds))
    if auth_failure_limit is not None:
        config = dataclasses.replace(config, auth_failure_limit=auth_failure_limit)
    if auth_lockout is not None:
        config = dataclasses.replace(
            config, auth_lockout_seconds=parse_duration(auth_lockout, "auth_lockout")
        )
    if sigv4_max_skew is not None:
        config = dataclasses.replace(
            config, sigv4_max_skew_seconds=parse_duration(sigv4_max_skew, "sigv4_max_skew")
        )
    if access_max_duration is not None:
        config = dataclasses.replace(
            config,
            access_max_duration_seconds=parse_duration(access_max_duration, "access_max_duration"),
        )
    config = _session_options(
        config, session_idle_timeout, session_max_duration, session_resume_grace
    )
    if ws_ping_interval is not None:
        ping = parse_duration(ws_ping_interval, "ws_ping_interval") or None
        config = dataclasses.replace(
            config, ws_ping_interval_seconds=ping, ws_ping_timeout_seconds=ping
        )
    if session_record_input:
        config = dataclasses.replace(config, session_record_input=True)
    if session_shell_profile is not None:
        config = dataclasses.replace(
            config, session_shell_profile=read_shell_profile(session_shell_profile)
        )
    # Imported lazily so the rest of the CLI never loads the web framework.
    server_main = importlib.import_module("corral.server.main")
    result = server_main.run(config)
    if inspect.isawaitable(result):
        asyncio.run(_await(result))


async def _await(awaitable: object) -> None:
    assert inspect.isawaitable(awaitable)
    await awaitable
