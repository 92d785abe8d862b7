"""The built-in documents shipped in ``corral/documents/builtin/*.json``."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType


def _load_builtin_documents() -> dict[str, str]:
    folder = resources.files("corral.documents").joinpath("builtin")
    documents: dict[str, str] = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".json"):
            documents[entry.name.removesuffix(".json")] = entry.read_text(encoding="utf-8")
    return documents


BUILTIN_DOCUMENTS: Mapping[str, str] = MappingProxyType(_load_builtin_documents())
"""Built-in document name -> its JSON content."""
