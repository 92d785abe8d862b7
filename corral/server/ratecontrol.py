"""Rate control math for Run Command: MaxConcurrency and MaxErrors (pure code).

* A limit is `"N"` or `"N%"`; a percentage is of the command's target count, rounded down.
* Concurrency is at least 1. Errors: once the error count EXCEEDS the limit, invocations
  not yet sent end Cancelled/Terminated (MaxErrors "0" stops after the first error).
"""

from __future__ import annotations

import re

from corral.errors import ValidationError

_LIMIT = re.compile(r"^(\d{1,9})(%?)$")


def validate_limit(spec: str, field: str) -> str:
    """Return `spec` if it is `N` or `N%` (percent at most 100); ValidationError naming `field`."""
    match = _LIMIT.match(spec.strip())
    if match is None:
        raise ValidationError(f"{field} must be a number or a percentage such as 10%", field=field)
    if match.group(2) and int(match.group(1)) > 100:
        raise ValidationError(f"{field} percentage must be at most 100%", field=field)
    return spec.strip()


def resolve_limit(spec: str, targets: int) -> int:
    """The absolute value of `N` or `N%` for a command with `targets` targets."""
    match = _LIMIT.match(spec.strip())
    if match is None:
        raise ValidationError(f"invalid limit {spec!r}")
    value = int(match.group(1))
    if match.group(2):
        return value * targets // 100
    return value


def concurrency_limit(spec: str, targets: int) -> int:
    """How many invocations may be in flight at once (at least 1)."""
    return max(1, resolve_limit(spec, targets))


def error_limit(spec: str, targets: int) -> int:
    """How many errors are tolerated before unsent invocations are terminated."""
    return resolve_limit(spec, targets)


def errors_exceeded(errors: int, limit: int) -> bool:
    """True once the error count has passed MaxErrors."""
    return errors > limit


def sendable(in_flight: int, limit: int, queued: int) -> int:
    """How many queued invocations may be sent now."""
    return max(0, min(queued, limit - in_flight))
