"""Rendering: one JSON document or Rich tables on stdout, errors on stderr.

Under `-o json` stdout carries exactly one JSON document and errors are
`{"error": {"type", "message", "field"}}` on stderr. Human output never lets Rich
interpret markup in server data (every cell is a `Text`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from corral.cli.client import CliError


def stdout_console() -> Console:
    """A console on the current sys.stdout (looked up at print time)."""
    return Console(highlight=False, soft_wrap=False)


def stderr_console() -> Console:
    """A console on the current sys.stderr."""
    return Console(stderr=True, highlight=False)


def emit_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def write_raw(text: str) -> None:
    """Write text to stdout exactly as given (no markup, no wrapping)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def note(message: str) -> None:
    """A human note on stderr (never stdout)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def render_error(error: CliError, as_json: bool) -> None:
    """Print an error on stderr in the chosen format."""
    if as_json:
        body = {"error": {"type": error.type, "message": error.message, "field": error.field}}
        sys.stderr.write(json.dumps(body) + "\n")
    elif error.field and not error.message.startswith(error.field):
        sys.stderr.write(f"error: {error.field}: {error.message}\n")
    else:
        sys.stderr.write(f"error: {error.message}\n")
    sys.stderr.flush()


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print a Rich table on stdout; cells are plain text, the first (id) column never wraps."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for index, column in enumerate(columns):
        table.add_column(column, overflow="fold", no_wrap=index == 0)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    stdout_console().print(table)


def print_fields(pairs: Iterable[tuple[str, str]]) -> None:
    """Print `label: value` lines on stdout as plain text."""
    items = list(pairs)
    width = max((len(label) for label, _ in items), default=0)
    for label, value in items:
        sys.stdout.write(f"{label + ':':<{width + 1}} {value}\n")
    sys.stdout.flush()


def parse_timestamp(value: Any) -> datetime | None:
    """Parse an API timestamp (ISO 8601, `Z`); None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_ago(value: Any, now: datetime | None = None) -> str:
    """Render a timestamp as `12s ago`, `5m ago`, `3h ago`, `2d ago` (or `-`)."""
    parsed = parse_timestamp(value)
    if parsed is None:
        return "-" if value in (None, "") else str(value)
    seconds = int(((now or datetime.now(UTC)) - parsed).total_seconds())
    if seconds < 0:
        return "in " + _span(-seconds)
    return _span(seconds) + " ago"


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_time(value: Any) -> str:
    """Render a timestamp as ISO (second precision, UTC) for human output."""
    parsed = parse_timestamp(value)
    if parsed is None:
        return "-" if value in (None, "") else str(value)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_tags(tags: Any) -> str:
    """Render tags as `k=v, k2=v2`."""
    if not isinstance(tags, dict) or not tags:
        return "-"
    return ", ".join(f"{key}={value}" for key, value in sorted(tags.items()))


def text_or_dash(value: Any) -> str:
    """Render a scalar for a table cell."""
    return "-" if value is None or value == "" else str(value)
