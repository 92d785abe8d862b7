"""`corral param`: Parameter Store values, versions, labels and metadata.

Rules of this group (see docs/cli.md, "Parameter Store"):
* `put` takes the value as VALUE or from `--value-file F` (`-` is stdin), never both.
  A file's content is used as is, except that a single final newline (`\\n` or
  `\\r\\n`, as `echo` and editors add) is dropped; content ending in two or more
  newlines is kept exactly. A value starting with `-` goes after `--`.
* A value is never echoed in an error message, and human output never shows a
  SecureString that was not decrypted (`(encrypted)`); `-o json` prints the server's
  objects unchanged, so without `--decrypt` a SecureString's `value` is its ciphertext.
* `get-by-path`, `list` and `history` follow the API's `next_token` to the end and
  print one JSON array.
* `delete` sends at most 10 names per request; names that did not exist are reported
  and make the exit status 3 (after the others are deleted).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli import output
from corral.cli.client import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_USAGE, ApiClient, CliError
from corral.cli.state import app_state
from corral.cli.values import parse_key_values

app = typer.Typer(
    help="Parameter Store: configuration values and encrypted secrets, by hierarchical name."
)

TYPES = ("String", "StringList", "SecureString")
TIERS = ("Standard", "Advanced", "Intelligent-Tiering")
PAGE_SIZE = 50  # the API's largest max_results
DELETE_BATCH = 10  # the API's largest delete request
ENCRYPTED = "(encrypted)"

PARAMETERS = "/api/v1/parameters"

_LIST_COLUMNS = ["NAME", "TYPE", "VERSION", "TIER", "LAST MODIFIED", "POLICIES"]
_VALUE_COLUMNS = ["NAME", "TYPE", "VERSION", "LAST MODIFIED", "VALUE"]
_HISTORY_COLUMNS = ["VERSION", "LABELS", "LAST MODIFIED", "MODIFIED BY", "VALUE"]


# --- pure helpers -----------------------------------------------------------------


def strip_final_newline(text: str) -> str:
    """Drop one final `\\n` / `\\r\\n`, unless the text ends with two or more newlines."""
    for ending in ("\r\n", "\n"):
        if text.endswith(ending):
            rest = text[: -len(ending)]
            return text if rest.endswith("\n") else rest
    return text


def read_value_file(source: str) -> str:
    """The value in `--value-file` (`-`: stdin) as UTF-8 text, final newline dropped."""
    try:
        if source == "-":
            buffer = getattr(sys.stdin, "buffer", None)
            data = buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8")
        else:
            data = Path(source).expanduser().read_bytes()
    except OSError as exc:
        raise CliError(
            f"cannot read --value-file {source}: {exc.strerror or exc}", field="value_file"
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = "stdin" if source == "-" else source
        raise CliError(f"--value-file {where} is not UTF-8 text", field="value_file") from exc
    return strip_final_newline(text)


def resolve_value(value: str | None, value_file: str | None) -> str:
    """Exactly one of VALUE and `--value-file`."""
    if value is not None and value_file is not None:
        raise CliError("give the value as VALUE or with --value-file, not both", field="value")
    if value_file is not None:
        return read_value_file(value_file)
    if value is None:
        raise CliError(
            "a value is required: VALUE, or --value-file FILE (- for stdin)", field="value"
        )
    return value


def check_choice(value: str | None, choices: tuple[str, ...], field: str) -> None:
    """A usage error unless `value` is None or one of `choices`."""
    if value is not None and value not in choices:
        raise CliError(f"invalid --{field} {value!r}: use one of {', '.join(choices)}", field=field)


def split_version(ref: str, *, required: bool) -> tuple[str, int | None]:
    """`NAME` or `NAME:VERSION` (a positive number after the last `:`)."""
    name, sep, suffix = ref.strip().rpartition(":")
    if not sep:
        if required:
            raise CliError(
                f"{ref!r} needs a version: use NAME:VERSION (e.g. /app/db/url:3)", field="name"
            )
        return suffix, None
    if not name or not suffix.isdigit() or int(suffix) < 1:
        raise CliError(
            f"invalid {ref!r}: use NAME or NAME:VERSION with a version number", field="name"
        )
    return name, int(suffix)


def is_sealed(item: dict[str, Any]) -> bool:
    """Whether an API value object is a SecureString that was not decrypted."""
    return item.get("type") == "SecureString" and not item.get("decrypted")


def shown_value(item: dict[str, Any]) -> str:
    """A value for human output: `(encrypted)` for a SecureString not decrypted."""
    return ENCRYPTED if is_sealed(item) else str(item.get("value", ""))


def format_labels(labels: Any) -> str:
    """`prod, blue` or `-`."""
    if not isinstance(labels, list) or not labels:
        return "-"
    return ", ".join(str(label) for label in labels)


def format_policies(policies: Any) -> str:
    """`Expiration: Pending, NoChangeNotification: Finished` or `-`."""
    if not isinstance(policies, list) or not policies:
        return "-"
    parts = []
    for policy in policies:
        if isinstance(policy, dict):
            kind = policy.get("type") or policy.get("Type") or "?"
            status = policy.get("status")
            parts.append(f"{kind}: {status}" if status else str(kind))
    return ", ".join(parts) or "-"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def fetch_all(
    client: ApiClient, path: str, query: list[tuple[str, str]], key: str
) -> list[dict[str, Any]]:
    """Every item of a paged API answer, following `next_token` to the end."""
    items: list[dict[str, Any]] = []
    token: str | None = None
    seen: set[str] = set()
    while True:
        params = [*query, ("max_results", str(PAGE_SIZE))]
        if token:
            params.append(("next_token", token))
        page = client.get(path, params=params)
        items.extend(item for item in page.get(key) or [] if isinstance(item, dict))
        token = page.get("next_token")
        if not token:
            return items
        if token in seen:
            raise CliError(
                f"the server repeated a next_token while paging {path}",
                type_="InternalError",
                exit_code=EXIT_FAILED,
            )
        seen.add(token)


def _value_row(item: dict[str, Any]) -> list[str]:
    return [
        str(item.get("name", "")),
        output.text_or_dash(item.get("type")),
        output.text_or_dash(item.get("version")),
        output.format_time(item.get("last_modified")),
        shown_value(item),
    ]


def _meta_row(meta: dict[str, Any]) -> list[str]:
    return [
        str(meta.get("name", "")),
        output.text_or_dash(meta.get("type")),
        output.text_or_dash(meta.get("version")),
        output.text_or_dash(meta.get("tier")),
        output.format_time(meta.get("last_modified")),
        format_policies(meta.get("policies")),
    ]


def _history_row(entry: dict[str, Any]) -> list[str]:
    return [
        output.text_or_dash(entry.get("version")),
        format_labels(entry.get("labels")),
        output.format_time(entry.get("last_modified")),
        output.text_or_dash(entry.get("last_modified_by")),
        shown_value(entry),
    ]


# --- commands -----------------------------------------------------------------------


@app.command("put")
def put(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Parameter name, e.g. /app/prod/db/url.")],
    value: Annotated[
        str | None,
        typer.Argument(
            help="The value (or use --value-file; put a value starting with - after --)."
        ),
    ] = None,
    type_: Annotated[
        str | None,
        typer.Option(
            "--type", help="String (default for a new parameter), StringList or SecureString."
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Encryption key of a SecureString (default: default)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Add a version to an existing parameter.")
    ] = False,
    description: Annotated[str | None, typer.Option("--description", help="Description.")] = None,
    allowed_pattern: Annotated[
        str | None,
        typer.Option("--allowed-pattern", help="Regular expression the whole value must match."),
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="A tag KEY=VALUE (repeatable; only when creating)."),
    ] = None,
    value_file: Annotated[
        str | None,
        typer.Option(
            "--value-file",
            help="Read the value from this file (- for stdin); one final newline is dropped.",
        ),
    ] = None,
    tier: Annotated[
        str | None,
        typer.Option(
            "--tier", help="Standard (4 KB), Advanced (8 KB, policies) or Intelligent-Tiering."
        ),
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option(
            "--policies",
            help='Policies as Systems Manager JSON, e.g. \'[{"Type":"Expiration",...}]\'.',
        ),
    ] = None,
) -> None:
    """Create a parameter, or add a version to it with --overwrite.

    Without --overwrite an existing name is refused (exit 2, ConflictError). Prefer
    --value-file - for secrets: a VALUE on the command line is visible to other local
    users while the command runs.
    """
    state = app_state(ctx)
    check_choice(type_, TYPES, "type")
    check_choice(tier, TIERS, "tier")
    body: dict[str, Any] = {
        "name": name,
        "value": resolve_value(value, value_file),
        "overwrite": overwrite,
    }
    tags = parse_key_values(list(tag or []), "tag")
    optional = {
        "type": type_,
        "key_id": key,
        "description": description,
        "allowed_pattern": allowed_pattern,
        "tier": tier,
        "policies": policies,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if tags:
        body["tags"] = tags
    with state.client() as client:
        result = client.post(PARAMETERS, body)
    if state.json_output:
        output.emit_json(result)
        return
    output.write_raw(
        f"Put {result.get('name', name)} version {result.get('version')} ({result.get('tier')})\n"
    )


@app.command("get")
def get(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or NAME:LABEL.")],
    decrypt: Annotated[
        bool, typer.Option("--decrypt", help="Decrypt a SecureString (parameter:GetDecrypted).")
    ] = False,
) -> None:
    """Show one parameter version (the latest, or the given version or label)."""
    state = app_state(ctx)
    with state.client() as client:
        item = client.get(f"{PARAMETERS}/value", params={"name": name, "decrypt": _flag(decrypt)})
    if state.json_output:
        output.emit_json(item)
        return
    fields = [
        ("Name", str(item.get("name"))),
        ("Type", output.text_or_dash(item.get("type"))),
        ("Version", output.text_or_dash(item.get("version"))),
        ("Labels", format_labels(item.get("labels"))),
        ("Last modified", output.format_time(item.get("last_modified"))),
    ]
    if is_sealed(item):
        output.print_fields([*fields, ("Value", "(encrypted; add --decrypt to show it)")])
        return
    text = str(item.get("value", ""))
    if "\n" not in text:
        output.print_fields([*fields, ("Value", text)])
        return
    output.print_fields(fields)
    output.write_raw("Value:\n" + text + ("" if text.endswith("\n") else "\n"))


@app.command("get-by-path")
def get_by_path(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="A path such as /app/prod (or /).")],
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Include every level below the path.")
    ] = False,
    decrypt: Annotated[bool, typer.Option("--decrypt", help="Decrypt SecureStrings.")] = False,
) -> None:
    """The latest version of each parameter directly under PATH (all below with --recursive)."""
    state = app_state(ctx)
    query = [("path", path), ("recursive", _flag(recursive)), ("decrypt", _flag(decrypt))]
    with state.client() as client:
        items = fetch_all(client, f"{PARAMETERS}/by-path", query, "parameters")
    if state.json_output:
        output.emit_json(items)
        return
    output.print_table(_VALUE_COLUMNS, [_value_row(item) for item in items])


@app.command("list")
def list_(
    ctx: typer.Context,
    path: Annotated[
        str | None, typer.Option("--path", help="Only parameters anywhere below this path.")
    ] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only String, StringList or SecureString.")
    ] = None,
    key: Annotated[
        str | None, typer.Option("--key", help="Only SecureStrings under this key.")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only with tag KEY=VALUE (KEY=V1,V2: any; KEY: any value)."),
    ] = None,
) -> None:
    """List parameters' metadata (never values), with their policies' status."""
    state = app_state(ctx)
    check_choice(type_, TYPES, "type")
    query: list[tuple[str, str]] = []
    if path is not None:
        query.append(("path", path))
    if type_ is not None:
        query.append(("type", type_))
    if key is not None:
        query.append(("key_id", key))
    query.extend(("tag", spec) for spec in tag or [])
    with state.client() as client:
        items = fetch_all(client, PARAMETERS, query, "parameters")
    if state.json_output:
        output.emit_json(items)
        return
    output.print_table(_LIST_COLUMNS, [_meta_row(meta) for meta in items])


@app.command("history")
def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Parameter name.")],
    decrypt: Annotated[bool, typer.Option("--decrypt", help="Decrypt SecureStrings.")] = False,
) -> None:
    """Every kept version of a parameter, oldest first."""
    state = app_state(ctx)
    query = [("name", name), ("decrypt", _flag(decrypt))]
    with state.client() as client:
        versions = fetch_all(client, f"{PARAMETERS}/history", query, "versions")
    if state.json_output:
        output.emit_json(versions)
        return
    output.print_table(_HISTORY_COLUMNS, [_history_row(entry) for entry in versions])


@app.command("label")
def label(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME (the latest version) or NAME:VERSION.")],
    labels: Annotated[list[str], typer.Argument(help="Labels to attach (at most 10).")],
) -> None:
    """Attach labels to a version; a label on another version of the parameter moves here.

    NAME alone labels the latest version. Exit 2 if the server refuses a label.
    """
    state = app_state(ctx)
    name, version = split_version(ref, required=False)
    body: dict[str, Any] = {"name": name, "labels": list(labels)}
    if version is not None:
        body["version"] = version
    with state.client() as client:
        result = client.post(f"{PARAMETERS}/label", body)
    refused = [str(x) for x in result.get("invalid_labels") or []]
    if state.json_output:
        output.emit_json(result)
    else:
        attached = [x for x in labels if x not in refused]
        if attached:
            output.write_raw(
                f"Labelled {result.get('name', name)} version {result.get('version')}: "
                f"{', '.join(attached)}\n"
            )
    if refused:
        if not state.json_output:
            output.note(f"error: labels refused: {', '.join(refused)}")
        raise typer.Exit(EXIT_USAGE)


@app.command("unlabel")
def unlabel(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION (the version is required).")],
    labels: Annotated[list[str], typer.Argument(help="Labels to remove.")],
) -> None:
    """Remove labels from a version (exit 3 if a label was not on it; the others are removed)."""
    state = app_state(ctx)
    name, version = split_version(ref, required=True)
    body = {"name": name, "version": version, "labels": list(labels)}
    with state.client() as client:
        result = client.post(f"{PARAMETERS}/unlabel", body)
    removed = [str(x) for x in result.get("removed_labels") or []]
    missing = [str(x) for x in result.get("invalid_labels") or []]
    if state.json_output:
        output.emit_json(result)
    else:
        if removed:
            output.write_raw(f"Removed from {name} version {version}: {', '.join(removed)}\n")
        if missing:
            output.note(f"error: not on {name} version {version}: {', '.join(missing)}")
    if missing:
        raise typer.Exit(EXIT_NOT_FOUND)


@app.command("delete")
def delete(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Parameter names.")],
) -> None:
    """Delete parameters with every version.

    Exit 3 when any name did not exist; the others are deleted all the same. JSON:
    {"deleted": [...], "invalid": [...]}.
    """
    state = app_state(ctx)
    unique = list(dict.fromkeys(name.strip() for name in names))
    deleted: list[str] = []
    invalid: list[str] = []
    with state.client() as client:
        for start in range(0, len(unique), DELETE_BATCH):
            batch = unique[start : start + DELETE_BATCH]
            try:
                result = client.post(f"{PARAMETERS}/delete", {"names": batch})
            except CliError:
                if deleted:
                    output.note(f"Deleted before the error: {', '.join(deleted)}")
                raise
            deleted.extend(str(x) for x in result.get("deleted") or [])
            invalid.extend(str(x) for x in result.get("invalid") or [])
    if state.json_output:
        output.emit_json({"deleted": deleted, "invalid": invalid})
    else:
        for name in deleted:
            output.write_raw(f"Deleted {name}\n")
        for name in invalid:
            output.note(f"error: parameter {name} does not exist")
    if invalid:
        raise typer.Exit(EXIT_NOT_FOUND)
