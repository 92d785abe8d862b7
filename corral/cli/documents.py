"""`corral doc`: create, update, list, show, set-default and delete documents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from corral.cli import output
from corral.cli.client import CliError
from corral.cli.state import app_state
from corral.cli.values import parse_document_ref

app = typer.Typer(help="Manage versioned documents (JSON or YAML).")

_COLUMNS = ["NAME", "TYPE", "DEFAULT", "LATEST", "OWNER", "DESCRIPTION"]
_FORMATS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


def format_for(path: Path) -> str | None:
    """The document format implied by a file's extension; None lets the server detect."""
    return _FORMATS.get(path.suffix.lower())


def read_document(path: Path) -> tuple[str, str | None]:
    """Read a document file and return its text and format."""
    try:
        return path.read_text(encoding="utf-8"), format_for(path)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", field="file") from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text", field="file") from exc


def _doc_path(name: str) -> str:
    return f"/api/v1/documents/{quote(name, safe='')}"


def _show(doc: dict[str, Any], as_json: bool, with_content: bool = True) -> None:
    if as_json:
        output.emit_json(doc)
        return
    params = doc.get("parameters") or {}
    param_text = ", ".join(
        f"{name} ({spec.get('type', '?')})" if isinstance(spec, dict) else name
        for name, spec in params.items()
    )
    output.print_fields(
        [
            ("Name", str(doc.get("name"))),
            ("Version", output.text_or_dash(doc.get("version"))),
            ("Default version", output.text_or_dash(doc.get("default_version"))),
            ("Latest version", output.text_or_dash(doc.get("latest_version"))),
            ("Type", output.text_or_dash(doc.get("document_type"))),
            ("Schema version", output.text_or_dash(doc.get("schema_version"))),
            ("Description", output.text_or_dash(doc.get("description"))),
            ("Parameters", param_text or "-"),
            ("Owner", output.text_or_dash(doc.get("owner"))),
            ("Format", output.text_or_dash(doc.get("format"))),
            ("Created", output.format_time(doc.get("created_at"))),
        ]
    )
    content = doc.get("content")
    if with_content and isinstance(content, str):
        output.write_raw("\n" + content + ("" if content.endswith("\n") else "\n"))


@app.command("create")
def create(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Document file (.json, .yaml, .yml).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Document name (default: file stem).")
    ] = None,
) -> None:
    """Create a document (version 1) from a file."""
    state = app_state(ctx)
    content, fmt = read_document(file)
    body = {"name": name or file.stem, "content": content, "format": fmt}
    with state.client() as client:
        doc = client.post("/api/v1/documents", body)
    _show(doc, state.json_output, with_content=False)


@app.command("update")
def update(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Document name.")],
    file: Annotated[Path, typer.Argument(help="New content (.json, .yaml, .yml).")],
) -> None:
    """Add a new version of a document."""
    state = app_state(ctx)
    content, fmt = read_document(file)
    with state.client() as client:
        doc = client.put(_doc_path(name), {"content": content, "format": fmt})
    _show(doc, state.json_output, with_content=False)


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List documents."""
    state = app_state(ctx)
    with state.client() as client:
        docs = client.get("/api/v1/documents")
    if state.json_output:
        output.emit_json(docs)
        return
    rows = [
        [
            str(doc.get("name")),
            output.text_or_dash(doc.get("document_type")),
            output.text_or_dash(doc.get("default_version")),
            output.text_or_dash(doc.get("latest_version")),
            output.text_or_dash(doc.get("owner")),
            output.text_or_dash(doc.get("description")),
        ]
        for doc in docs
    ]
    output.print_table(_COLUMNS, rows)


@app.command("show")
def show(
    ctx: typer.Context,
    ref: Annotated[
        str,
        typer.Argument(
            metavar="NAME[:VERSION]", help="NAME, NAME:3, NAME:latest or NAME:$DEFAULT."
        ),
    ],
) -> None:
    """Show a document's metadata and content."""
    state = app_state(ctx)
    doc_ref = parse_document_ref(ref)
    params = {"version": doc_ref.query_version} if doc_ref.query_version else None
    with state.client() as client:
        doc = client.get(_doc_path(doc_ref.name), params=params)
    _show(doc, state.json_output)


@app.command("set-default")
def set_default(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Document name.")],
    version: Annotated[int, typer.Argument(help="Version to make the default.", min=1)],
) -> None:
    """Make VERSION the document's default version."""
    state = app_state(ctx)
    with state.client() as client:
        doc = client.put(f"{_doc_path(name)}/default-version", {"version": version})
    _show(doc, state.json_output, with_content=False)


@app.command("delete")
def delete(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Document name.")]) -> None:
    """Delete a document and all its versions."""
    state = app_state(ctx)
    with state.client() as client:
        client.delete(_doc_path(name))
    if state.json_output:
        output.emit_json({"name": name, "deleted": True})
    else:
        output.note(f"Deleted document {name}.")
