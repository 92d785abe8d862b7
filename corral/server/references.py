"""Parameter Store references in command parameters: `{{ssm:NAME}}`, `{{ssm-secure:NAME}}`.

When a command is sent, every reference is resolved with the sender's rights
(`parameter:Get`, and `parameter:GetDecrypted` for `ssm-secure`) and the version it
resolved to is recorded. `{{ssm:...}}` values are pasted into the stored parameters.
`{{ssm-secure:...}}` references stay in the stored command as written: the secret is
decrypted again (that recorded version) only to build the Invoke for a node, and the
node is told to mask it in the output. So no command record, `commands show` or
rendering cache ever holds the plaintext.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass

from corral.documents.model import Document
from corral.documents.references import PARAMETER_STORE_REFERENCE, ReferenceResolver
from corral.documents.resolution import resolve_parameters
from corral.errors import DocumentError
from corral.params import Authorizer, ParameterService


@dataclass(frozen=True, slots=True)
class Resolved:
    """One reference and what it resolved to."""

    reference: str  # the exact text, e.g. "{{ssm-secure:/app/db}}"
    secure: bool
    name: str
    version: int
    value: str  # plaintext; never stored for secure references

    def record(self) -> dict[str, object]:
        """What the command record keeps (never the value of a secure reference)."""
        return {
            "reference": self.reference,
            "name": self.name,
            "version": self.version,
            "secure": self.secure,
        }


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _raw_values(doc: Document, given: Mapping[str, object]) -> dict[str, object]:
    raw: dict[str, object] = {}
    for name, spec in doc.parameters.items():
        if name in given:
            raw[name] = given[name]
        elif spec.has_default:
            raw[name] = spec.default
    return raw


def _substitute(value: object, replace: Callable[[str], str]) -> object:
    if isinstance(value, str):
        return replace(value)
    if isinstance(value, list):
        return [_substitute(item, replace) for item in value]
    if isinstance(value, dict):
        return {key: _substitute(item, replace) for key, item in value.items()}
    return value


def resolver(values: Mapping[str, str], only_plain: bool = False) -> ReferenceResolver:
    """A resolver pasting resolved values (with `only_plain`, secure references stay)."""

    def resolve(text: str, field: str) -> str:
        def one(match: object) -> str:
            whole = match.group(0)  # type: ignore[attr-defined]
            secure = match.group(1) == "ssm-secure"  # type: ignore[attr-defined]
            if only_plain and secure:
                return str(whole)
            if whole not in values:
                raise DocumentError(f"reference {whole} was not resolved", field=field)
            return values[whole]

        return PARAMETER_STORE_REFERENCE.sub(one, text)

    return resolve


async def resolve_command_parameters(
    service: ParameterService,
    caller: Authorizer,
    doc: Document,
    given: Mapping[str, object],
) -> tuple[dict[str, object], list[Resolved]]:
    """(parameters to store, references resolved), checked as the node will see them."""
    raw = _raw_values(doc, given)
    found: dict[str, Resolved] = {}
    for name, value in raw.items():
        for text in _strings(value):
            for match in PARAMETER_STORE_REFERENCE.finditer(text):
                whole, kind, target = match.group(0), match.group(1), match.group(2).strip()
                if whole in found:
                    continue
                field = f"parameters.{name}"
                secure = kind == "ssm-secure"
                got = await service.get(caller, target, decrypt=secure)
                if got.type == "SecureString" and not secure:
                    raise DocumentError(
                        f"{whole} names a SecureString; reference it as "
                        f"{{{{ssm-secure:{target}}}}} so it is never stored in clear",
                        field=field,
                    )
                if secure and got.type != "SecureString":
                    raise DocumentError(
                        f"{whole} names a {got.type}; use {{{{ssm:{target}}}}}", field=field
                    )
                found[whole] = Resolved(whole, secure, got.name, got.version, got.value)
    if not found:
        return resolve_parameters(doc, given), []
    plain = {r.reference: r.value for r in found.values()}
    # Validate exactly what the node will run with (secrets included), then store each
    # parameter either validated (no secret in it) or as text with its secure
    # references left in place.
    validated = resolve_parameters(doc, given, reference_resolver=resolver(plain))
    keep = resolver(plain, only_plain=True)
    stored: dict[str, object] = {}
    for name, value in validated.items():
        original = raw.get(name)
        if any(
            m.group(1) == "ssm-secure"
            for text in _strings(original)
            for m in PARAMETER_STORE_REFERENCE.finditer(text)
        ):
            stored[name] = _substitute(
                original, functools.partial(_keep, keep, f"parameters.{name}")
            )
        else:
            stored[name] = value
    return stored, list(found.values())


def _keep(keep: ReferenceResolver, field: str, text: str) -> str:
    return keep(text, field)


Opener = Callable[[str, int], Awaitable[str]]


async def secure_values(references: list[dict[str, object]], open_value: Opener) -> dict[str, str]:
    """reference text -> plaintext for a command's secure references (for one delivery)."""
    out: dict[str, str] = {}
    for ref in references:
        if ref.get("secure"):
            out[str(ref["reference"])] = await open_value(
                str(ref["name"]), int(str(ref["version"]))
            )
    return out
