"""HTTP client for the Corral API, config-file handling, and error mapping in one place.

Every httpx exception and every non-2xx response becomes a `CliError` here, carrying
the exit code listed in docs/cli.md; nothing else in the CLI touches httpx errors.
Tests inject a fake API through `use_transport` (the one seam).
"""

from __future__ import annotations

import logging
import os
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_AUTH = 4
EXIT_UNAVAILABLE = 5
EXIT_INTERRUPTED = 130

JsonObject = dict[str, Any]

_STATUS_EXIT = {
    400: (EXIT_USAGE, "ValidationError"),
    422: (EXIT_USAGE, "ValidationError"),
    409: (EXIT_USAGE, "ConflictError"),
    401: (EXIT_AUTH, "AuthError"),
    403: (EXIT_AUTH, "AccessDeniedError"),
    429: (EXIT_AUTH, "RateLimitedError"),
    404: (EXIT_NOT_FOUND, "NotFoundError"),
    503: (EXIT_UNAVAILABLE, "UnavailableError"),
}

_transport: httpx.BaseTransport | None = None


def use_transport(transport: httpx.BaseTransport | None) -> None:
    """Route every client through `transport` (tests); None restores real networking."""
    global _transport
    _transport = transport


class CliError(Exception):
    """A failure to report to the operator, with its error type, field and exit code."""

    def __init__(
        self,
        message: str,
        *,
        type_: str = "ValidationError",
        field: str | None = None,
        exit_code: int = EXIT_USAGE,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.type = type_
        self.field = field
        self.exit_code = exit_code


def error_from_response(response: httpx.Response) -> CliError:
    """Translate a non-2xx API response into a CliError."""
    exit_code, default_type = _STATUS_EXIT.get(response.status_code, (EXIT_FAILED, "InternalError"))
    message = f"server answered HTTP {response.status_code}"
    type_ = default_type
    field: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        type_ = str(error.get("type") or default_type)
        raw_field = error.get("field")
        field = str(raw_field) if raw_field is not None else None
    return CliError(
        message, type_=type_, field=field, exit_code=exit_code, http_status=response.status_code
    )


# --- configuration -----------------------------------------------------------------


def config_path() -> Path:
    """Where `corral login` writes and every command reads the config file."""
    explicit = os.environ.get("CORRAL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "corral" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """Read the config file; a missing file is an empty config."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"cannot read config file {path}: {exc}", field="config") from exc
    return {key: str(value) for key, value in data.items() if isinstance(value, str)}


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(ch if ch >= " " else f"\\u{ord(ch):04x}" for ch in escaped)
    return f'"{escaped}"'


def write_config(path: Path, values: dict[str, str]) -> None:
    """Write the config file with mode 0600 (its directory 0700 when created)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = "".join(f"{key} = {_toml_string(value)}\n" for key, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(text)


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how to reach the server."""

    server: str
    token: str | None = None
    ca_file: str | None = None


def resolve_connection(server: str | None, token: str | None, ca_file: str | None) -> Connection:
    """Apply precedence: flags, then CORRAL_* environment, then the config file."""
    config = read_config(config_path())
    chosen_server = server or os.environ.get("CORRAL_SERVER") or config.get("server")
    chosen_token = token or os.environ.get("CORRAL_TOKEN") or config.get("token")
    chosen_ca = ca_file or os.environ.get("CORRAL_CA_FILE") or config.get("ca_file")
    if not chosen_server:
        raise CliError(
            "no server configured: pass --server, set CORRAL_SERVER or run `corral login`",
            field="server",
        )
    return Connection(chosen_server.rstrip("/"), chosen_token or None, chosen_ca or None)


# --- client --------------------------------------------------------------------------


def ca_file_context(ca_file: str) -> ssl.SSLContext:
    """A TLS context that trusts only the CA certificates in `ca_file`; CliError if unusable."""
    try:
        return ssl.create_default_context(cafile=os.path.expanduser(ca_file))
    except FileNotFoundError as exc:
        raise CliError(f"--ca-file {ca_file} does not exist", field="ca_file") from exc
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"--ca-file {ca_file} is not a readable PEM CA certificate", field="ca_file"
        ) from exc


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an httpx error, if that is its cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class ApiClient:
    """A small synchronous client for /api/v1 that raises CliError on every failure."""

    def __init__(self, connection: Connection, timeout_seconds: float = 30.0) -> None:
        self.connection = connection
        headers = {"Accept": "application/json", "User-Agent": "corral-cli"}
        if connection.token:
            headers["Authorization"] = f"Bearer {connection.token}"
        verify: ssl.SSLContext | bool = True
        if connection.ca_file:
            verify = ca_file_context(connection.ca_file)
        self._http = httpx.Client(
            base_url=connection.server,
            headers=headers,
            timeout=timeout_seconds,
            verify=verify,
            transport=_transport,
        )

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Any = None,
        raw: bool = False,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for 204), or with `raw`
        the response itself (for non-JSON bodies such as recordings)."""
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TimeoutException as exc:
            raise CliError(
                f"server {self.connection.server} did not answer in time",
                type_="UnavailableError",
                exit_code=EXIT_UNAVAILABLE,
            ) from exc
        except httpx.TransportError as exc:
            untrusted = _certificate_error(exc)
            if untrusted is not None:
                raise CliError(
                    self._untrusted_message(untrusted),
                    type_="UnavailableError",
                    exit_code=EXIT_UNAVAILABLE,
                ) from exc
            raise CliError(
                f"cannot reach server {self.connection.server}: {exc}",
                type_="UnavailableError",
                exit_code=EXIT_UNAVAILABLE,
            ) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        if raw:
            return response
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise CliError(
                f"server {self.connection.server} sent a response that is not JSON",
                type_="InternalError",
                exit_code=EXIT_FAILED,
            ) from exc

    def _untrusted_message(self, error: ssl.SSLCertVerificationError) -> str:
        reason = error.verify_message or "verification failed"
        if self.connection.ca_file:
            hint = f"is --ca-file {self.connection.ca_file} the server's CA?"
        else:
            hint = (
                "for a server with a private CA pass --ca-file (or set CORRAL_CA_FILE) "
                "with its CA certificate (GET /ca.pem; DATA_DIR/tls/ca.crt on the server)"
            )
        return (
            f"the TLS certificate of server {self.connection.server} could not be verified "
            f"({reason}); {hint}"
        )

    def get(self, path: str, params: Any = None) -> Any:
        """GET and decode."""
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body and decode."""
        return self.request("POST", path, json=body)

    def put(self, path: str, body: Any = None) -> Any:
        """PUT a JSON body and decode."""
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any = None) -> Any:
        """PATCH a JSON body and decode."""
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        """DELETE and decode."""
        return self.request("DELETE", path)
