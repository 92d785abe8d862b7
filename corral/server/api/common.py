"""Shared API pieces: timestamps and the strict base model for request bodies."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

MAX_TAGS = 50
_TAG_KEY = re.compile(r"^[A-Za-z0-9 _.:/=+@-]{1,128}$")
_TAG_VALUE = re.compile(r"^[A-Za-z0-9 _.:/=+@-]{0,256}$")


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags are allowed")
    for key, value in tags.items():
        if not _TAG_KEY.match(key):
            raise ValueError(
                f"tag key {key[:40]!r} must be 1-128 characters of letters, digits, "
                "spaces and _ . : / = + @ -"
            )
        if key.lower().startswith(("aws:", "corral:")):
            raise ValueError(f"tag key {key[:40]!r} uses a reserved prefix (aws:, corral:)")
        if not _TAG_VALUE.match(value):
            raise ValueError(
                f"tag value for {key[:40]!r} must be at most 256 characters of letters, digits, "
                "spaces and _ . : / = + @ -"
            )
    return tags


# Tags as Systems Manager allows them: at most 50, keys up to 128 and values up to 256
# characters of letters, digits, spaces and _ . : / = + @ - (no comma: a target spec
# `tag:K=V1,V2` splits values on commas, so such a value could never be targeted).
Tags = Annotated[dict[str, str], AfterValidator(_check_tags)]


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def iso(timestamp: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds and a `Z`."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
