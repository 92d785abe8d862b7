"""Encoding and strict decoding of channel messages.

Rules:
* A frame is one JSON object of at most `max_bytes` bytes (UTF-8) with a `type`.
* Every field is checked against the dataclass annotation; unknown fields are
  ignored (a newer peer may add some), missing required fields are refused.
* A field's metadata may add limits: "max_items" (a list's length, checked before
  its items are converted), "min_chars"/"max_chars" (characters of a string, or of
  each string of a list; such strings must also be valid UTF-8 text, no lone
  surrogates).
* `bytes` fields are base64 strings on the wire.
* Any violation raises `ProtocolError` with a short, peer-safe message; the decoder
  never lets a `KeyError`/`TypeError` escape.
* Converters are built once per type from the annotations and cached: every
  invocation costs the server and the agent several frames, so the per-frame work
  is a few dict look-ups, not a walk over `typing` and `dataclasses` metadata.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin

from corral.errors import ProtocolError
from corral.protocol.messages import Message

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# Raw bytes of output per Output message; base64 and JSON keep it well under the frame limit.
DEFAULT_OUTPUT_CHUNK_BYTES = 64 * 1024

M = TypeVar("M", bound=Message)


def encode(message: Message) -> str:
    """Encode a message as one JSON text frame."""
    body = _dataclass_encoder(type(message))(message)
    body["type"] = message.TYPE
    return json.dumps(body, separators=(",", ":"))


def decode(
    frame: str | bytes,
    allowed: Iterable[type[Message]],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """Decode one frame into one of the `allowed` message types, or raise ProtocolError."""
    if isinstance(frame, bytes):
        size = len(frame)
    elif len(frame) * 4 <= max_bytes or frame.isascii():
        # UTF-8 needs at most 4 bytes per code point: no need to encode to know it fits.
        size = len(frame) if frame.isascii() else 0
    else:
        size = len(frame.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes}", "too_big")
    try:
        body = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("message is not valid JSON", "bad_message") from exc
    if not isinstance(body, dict):
        raise ProtocolError("message is not a JSON object", "bad_message")
    kind = body.get("type")
    by_type = _by_type(allowed if isinstance(allowed, tuple) else tuple(allowed))
    cls = by_type.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unexpected message type {str(kind)[:40]!r}", "bad_message")
    value = _converter(cls)(body, cls.TYPE)
    assert isinstance(value, Message)
    return value


@cache
def _by_type(allowed: tuple[type[Message], ...]) -> dict[str, type[Message]]:
    return {cls.TYPE: cls for cls in allowed}


# --- encoding ---------------------------------------------------------------

_PLAIN = frozenset({str, int, float, bool, type(None)})


def _to_wire(value: Any) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is bytes:
        return base64.b64encode(value).decode("ascii")
    if kind is list:
        return [_to_wire(v) for v in value]
    if kind is dict:
        return {k: _to_wire(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass_encoder(kind)(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _dataclass_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    encoder = _ENCODERS.get(cls)
    if encoder is None:
        encoder = _ENCODERS[cls] = _build_encoder(cls)
    return encoder


def _build_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    names = tuple(f.name for f in dataclasses.fields(cls))

    def encode_fields(value: Any) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for name in names:
            item = getattr(value, name)
            body[name] = item if type(item) in _PLAIN else _to_wire(item)
        return body

    return encode_fields


# --- decoding ---------------------------------------------------------------

Converter = Callable[[Any, str], Any]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_CONVERTERS: dict[Any, Converter] = {}


def _converter(tp: Any) -> Converter:
    """The function that checks and converts a wire value of annotation `tp`."""
    convert = _CONVERTERS.get(tp)
    if convert is None:
        convert = _CONVERTERS[tp] = _build_converter(tp)
    return convert


def _build_converter(tp: Any) -> Converter:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        nullable = type(None) in options
        inner = _converter(next(o for o in options if o is not type(None)))

        def optional(raw: Any, path: str) -> Any:
            if raw is None and nullable:
                return None
            return inner(raw, path)

        return optional
    if origin is list:
        (item_type,) = get_args(tp)
        item = _converter(item_type)

        def as_list(raw: Any, path: str) -> Any:
            if not isinstance(raw, list):
                raise ProtocolError(f"{path} must be a list", "bad_message")
            return [item(v, f"{path}[{i}]") for i, v in enumerate(raw)]

        return as_list
    if origin is dict:
        _, value_type = get_args(tp)
        value = _converter(value_type)

        def as_dict(raw: Any, path: str) -> Any:
            if not isinstance(raw, dict):
                raise ProtocolError(f"{path} must be an object", "bad_message")
            return {str(k): value(v, f"{path}.{k}") for k, v in raw.items()}

        return as_dict
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp)
    return _scalar_converter(tp)


def _dataclass_converter(cls: type) -> Converter:
    hints = _hints(cls)
    fields = [
        (
            f.name,
            _limited(_converter(hints[f.name]), f.metadata),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)
    ]

    def as_dataclass(raw: Any, path: str) -> Any:
        if not isinstance(raw, dict):
            raise ProtocolError(f"{path} must be an object", "bad_message")
        kwargs: dict[str, Any] = {}
        for name, convert, required in fields:
            if name in raw:
                kwargs[name] = convert(raw[name], f"{path}.{name}")
            elif required:
                raise ProtocolError(f"{path}.{name} is missing", "bad_message")
        return cls(**kwargs)

    return as_dataclass


def _limited(convert: Converter, metadata: Mapping[str, Any]) -> Converter:
    """`convert`, plus the limits a field's metadata declares (unchanged without any)."""
    max_items: int | None = metadata.get("max_items")
    min_chars: int = metadata.get("min_chars", 0)
    max_chars: int | None = metadata.get("max_chars")
    if max_items is None and min_chars == 0 and max_chars is None:
        return convert
    checks_text = min_chars > 0 or max_chars is not None

    def check_text(value: Any, path: str) -> None:
        if not isinstance(value, str):
            return
        if len(value) < min_chars or (max_chars is not None and len(value) > max_chars):
            bounds = f"{min_chars} to {max_chars}" if max_chars is not None else f">= {min_chars}"
            raise ProtocolError(f"{path} must have {bounds} characters", "bad_message")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolError(f"{path} is not valid UTF-8 text", "bad_message") from exc

    def limited(raw: Any, path: str) -> Any:
        if max_items is not None and isinstance(raw, list) and len(raw) > max_items:
            raise ProtocolError(f"{path} has more than {max_items} items", "bad_message")
        value = convert(raw, path)
        if checks_text:
            if isinstance(value, list):
                for index, item in enumerate(value):
                    check_text(item, f"{path}[{index}]")
            else:
                check_text(value, path)
        return value

    return limited


def _as_bytes(raw: Any, path: str) -> bytes:
    if not isinstance(raw, str):
        raise ProtocolError(f"{path} must be base64 text", "bad_message")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{path} is not valid base64", "bad_message") from exc


def _as_bool(raw: Any, path: str) -> bool:
    if not isinstance(raw, bool):
        raise ProtocolError(f"{path} must be a boolean", "bad_message")
    return raw


def _as_int(raw: Any, path: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ProtocolError(f"{path} must be an integer", "bad_message")
    return raw


def _as_float(raw: Any, path: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ProtocolError(f"{path} must be a number", "bad_message")
    return float(raw)


def _as_str(raw: Any, path: str) -> str:
    if not isinstance(raw, str):
        raise ProtocolError(f"{path} must be a string", "bad_message")
    return raw


def _unsupported(raw: Any, path: str) -> Any:
    raise ProtocolError(f"{path} has an unsupported type", "bad_message")


_SCALARS: dict[Any, Converter] = {
    bytes: _as_bytes,
    bool: _as_bool,
    int: _as_int,
    float: _as_float,
    str: _as_str,
}


def _scalar_converter(tp: Any) -> Converter:
    return _SCALARS.get(tp, _unsupported)
