"""Pure parsing of command-line values: durations, parameters, targets, document refs.

Rules (see docs/cli.md):
* durations are `30s`, `15m`, `24h`, `7d` or bare seconds;
* `--param NAME=VALUE` splits on the first `=`; repeating a NAME builds a list;
  integers (no leading zeros) and `true`/`false` are parsed, everything else stays a string;
* targets are node ids (a union), tag specs (`tag:K=V1,V2`, all must match) or `all`,
  never ids and tags mixed;
* document refs are `NAME`, `NAME:3`, `NAME:latest`, `NAME:$LATEST`, `NAME:$DEFAULT`.

Nothing here does I/O except `load_parameters_file`, which only reads the named file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from corral.errors import ValidationError

ParamValue = str | int | bool
ParamInput = ParamValue | list[ParamValue]

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INT_RE = re.compile(r"^-?(0|[1-9]\d*)$")
_NODE_ID_RE = re.compile(r"^mi-[0-9a-f]{17}$")
_TAG_SPEC_RE = re.compile(r"^tag:([^=,]+)=(.+)$")
_RATE_RE = re.compile(r"^(\d+)(%?)$")
_OUTPUT_FORMATS = ("json", "table", "text")


def parse_duration(text: str, field: str = "duration") -> float:
    """Parse `30s`, `15m`, `24h`, `7d` or bare seconds into seconds."""
    match = _DURATION_RE.match(text.strip().lower())
    if match is None:
        raise ValidationError(
            f"invalid duration {text!r}: use e.g. 30s, 15m, 24h, 7d or a number of seconds",
            field=field,
        )
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_scalar(text: str) -> ParamValue:
    """Turn one `--param` value into an int, a bool, or leave it a string."""
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT_RE.match(text):
        return int(text)
    return text


def parse_params(items: list[str]) -> dict[str, ParamInput]:
    """Build parameters from `NAME=VALUE` items; a repeated NAME becomes a list."""
    collected: dict[str, list[ParamValue]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValidationError(f"invalid --param {item!r}: expected NAME=VALUE", field="param")
        collected.setdefault(name, []).append(parse_scalar(value))
    return {name: vals[0] if len(vals) == 1 else vals for name, vals in collected.items()}


def parse_parameters_json(text: str) -> dict[str, Any]:
    """Parse the `--parameters-json` object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"--parameters-json is not valid JSON: {exc.msg}", field="parameters_json"
        ) from exc
    if not isinstance(value, dict):
        raise ValidationError("--parameters-json must be a JSON object", field="parameters_json")
    return value


def parse_parameters_text(text: str, source: str) -> dict[str, Any]:
    """Parse the contents of a `--parameters-file` (JSON or YAML) into an object."""
    try:
        value = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ValidationError(
            f"{source} is neither valid JSON nor valid YAML", field="parameters_file"
        ) from exc
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValidationError(f"{source} must contain an object", field="parameters_file")
    return value


def load_parameters_file(path: Path) -> dict[str, Any]:
    """Read a `--parameters-file`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError(
            f"cannot read {path}: {exc.strerror}", field="parameters_file"
        ) from exc
    return parse_parameters_text(text, str(path))


def merge_parameters(
    from_file: dict[str, Any] | None,
    from_json: dict[str, Any] | None,
    from_params: dict[str, ParamInput],
) -> dict[str, Any]:
    """Merge parameter sources; later sources win: file, then JSON, then `--param`."""
    merged: dict[str, Any] = {}
    for source in (from_file, from_json, from_params):
        if source:
            merged.update(source)
    return merged


def validate_targets(specs: list[str]) -> list[str]:
    """Check target specs (ids, tag specs or `all`) and return them cleaned."""
    cleaned = [spec.strip() for spec in specs if spec.strip()]
    if not cleaned:
        raise ValidationError("at least one --targets value is required", field="targets")
    kinds: set[str] = set()
    for spec in cleaned:
        if spec == "all":
            kinds.add("all")
        elif _NODE_ID_RE.match(spec):
            kinds.add("id")
        elif _TAG_SPEC_RE.match(spec):
            match = _TAG_SPEC_RE.match(spec)
            assert match is not None
            if any(not value.strip() for value in match.group(2).split(",")):
                raise ValidationError(f"empty tag value in target {spec!r}", field="targets")
            kinds.add("tag")
        else:
            raise ValidationError(
                f"invalid target {spec!r}: use a node id (mi-...), tag:KEY=V1,V2 or all",
                field="targets",
            )
    if len(kinds) > 1:
        raise ValidationError(
            "node ids, tag specs and 'all' cannot be mixed in one call", field="targets"
        )
    if kinds == {"all"} and len(cleaned) > 1:
        cleaned = ["all"]
    return cleaned


def parse_rate(text: str, field: str) -> str:
    """Validate a MaxConcurrency/MaxErrors value: `N` or `N%`."""
    match = _RATE_RE.match(text.strip())
    if match is None or (match.group(2) and int(match.group(1)) > 100):
        raise ValidationError(f"invalid {field} {text!r}: use N or N% (0-100%)", field=field)
    return text.strip()


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """A document name with an optional version: a number, `$LATEST` or `$DEFAULT`."""

    name: str
    version: int | str | None = None

    @property
    def query_version(self) -> str | None:
        """The version as the API's `?version=` value, or None for the default."""
        return None if self.version is None else str(self.version)


def parse_document_ref(ref: str) -> DocumentRef:
    """Parse `NAME`, `NAME:3`, `NAME:latest`, `NAME:$LATEST` or `NAME:$DEFAULT`."""
    name, sep, version = ref.strip().rpartition(":")
    if not sep:
        name, version = version, ""
    if not name:
        raise ValidationError(f"invalid document reference {ref!r}", field="document")
    if not sep:
        return DocumentRef(name)
    lowered = version.lower()
    if lowered in ("latest", "$latest"):
        return DocumentRef(name, "$LATEST")
    if lowered in ("default", "$default"):
        return DocumentRef(name, "$DEFAULT")
    if version.isdigit() and int(version) > 0:
        return DocumentRef(name, int(version))
    raise ValidationError(
        f"invalid document version {version!r}: use a number, latest, $LATEST or $DEFAULT",
        field="document",
    )


def parse_key_values(items: list[str], field: str) -> dict[str, str]:
    """Parse `KEY=VALUE` items (tags) into a dict, splitting on the first `=`."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"invalid {field} {item!r}: expected KEY=VALUE", field=field)
        result[key.strip()] = value
    return result


def parse_listen(text: str) -> tuple[str, int]:
    """Parse `HOST:PORT` (or `[v6]:PORT`) for `corral server --listen`."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError(f"invalid --listen {text!r}: expected HOST:PORT", field="listen")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - an empty host means every interface
    return host, int(port)


def extract_output_option(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove `-o FMT` / `--output FMT` from anywhere in argv; return the rest and FMT.

    Only occurrences whose value is a known format are taken, so a `-o` that is the
    value of another option is left alone; everything after `--` is left untouched.
    """
    rest: list[str] = []
    fmt: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in ("-o", "--output") and i + 1 < len(argv) and argv[i + 1] in _OUTPUT_FORMATS:
            fmt = argv[i + 1]
            i += 2
            continue
        for prefix in ("--output=", "-o=", "-o"):
            if arg.startswith(prefix) and arg[len(prefix) :] in _OUTPUT_FORMATS:
                fmt = arg[len(prefix) :]
                break
        else:
            rest.append(arg)
        i += 1
    return rest, fmt


_GLOBAL_OPTIONS = ("--server", "--token", "--ca-file")


def extract_global_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """Lift `--server`, `--token` and `--ca-file` (with values) out of argv.

    They may then be written after the subcommand, like `-o json`; everything after
    `--` is left untouched. Returns the remaining argv and the lifted options.
    """
    rest: list[str] = []
    lifted: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_OPTIONS and i + 1 < len(argv):
            lifted.extend([arg, argv[i + 1]])
            i += 2
            continue
        if arg.split("=", 1)[0] in _GLOBAL_OPTIONS and "=" in arg:
            lifted.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, lifted
