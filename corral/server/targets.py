"""Targets: node ids (a union), tag specs (all must match) or `all` (pure code)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from corral.errors import ValidationError

NODE_ID = re.compile(r"^mi-[0-9a-f]{17}$")


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """Parsed `targets`: exactly one of every node, a set of ids, or tag filters."""

    all_nodes: bool = False
    node_ids: tuple[str, ...] = ()
    tags: dict[str, frozenset[str]] = field(default_factory=dict)

    def matches(self, node_id: str, tags: dict[str, str]) -> bool:
        """Whether a node with this id and tags is targeted."""
        if self.all_nodes:
            return True
        if self.node_ids:
            return node_id in self.node_ids
        return all(tags.get(k) in values for k, values in self.tags.items())


def parse_targets(specs: Sequence[str], field_name: str = "targets") -> TargetSpec:
    """Parse target strings; ValidationError with the index of the bad one."""
    if not specs:
        raise ValidationError("at least one target is required", field=field_name)
    ids: list[str] = []
    tags: dict[str, set[str]] = {}
    saw_all = False
    for i, raw in enumerate(specs):
        where = f"{field_name}[{i}]"
        spec = raw.strip()
        if spec == "all":
            saw_all = True
        elif spec.startswith("mi-"):
            if not NODE_ID.match(spec):
                raise ValidationError(f"{spec!r} is not a node id (mi- and 17 hex)", field=where)
            ids.append(spec)
        elif spec.startswith("tag:"):
            key, sep, values = spec[4:].partition("=")
            items = [v.strip() for v in values.split(",") if v.strip()]
            if not sep or not key.strip() or not items:
                raise ValidationError(f"{spec!r} must look like tag:KEY=V1,V2", field=where)
            tags.setdefault(key.strip(), set()).update(items)
        else:
            raise ValidationError(f"{spec!r} is not a node id, tag:KEY=VALUES or all", field=where)
    kinds = sum(1 for present in (saw_all, bool(ids), bool(tags)) if present)
    if kinds > 1:
        raise ValidationError("node ids, tag specs and all cannot be mixed", field=field_name)
    if saw_all:
        return TargetSpec(all_nodes=True)
    if ids:
        return TargetSpec(node_ids=tuple(dict.fromkeys(ids)))
    return TargetSpec(tags={k: frozenset(v) for k, v in tags.items()})


def select_nodes(spec: TargetSpec, nodes: Iterable[tuple[str, dict[str, str]]]) -> list[str]:
    """Ids of the nodes (id, tags) that `spec` targets, in the given order."""
    return [node_id for node_id, tags in nodes if spec.matches(node_id, tags)]
