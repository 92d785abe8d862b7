"""Encoding and strict decoding of channel messages.

Rules:
* A frame is one JSON object of at most `max_bytes` bytes (UTF-8) with a `type`.
* Every field is checked against the dataclass annotation; unknown fields are
  ignored (a newer peer may add some), missing required fields are refused.
* `bytes` fields are base64 strings on the wire.
* Any violation raises `ProtocolError` with a short, peer-safe message; the decoder
  never lets a `KeyError`/`TypeError` escape.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import types
import typing
from collections.abc import Iterable
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
    body = _to_wire(message)
    assert isinstance(body, dict)
    body["type"] = message.TYPE
    return json.dumps(body, separators=(",", ":"))


def decode(
    frame: str | bytes,
    allowed: Iterable[type[Message]],
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Message:
    """Decode one frame into one of the `allowed` message types, or raise ProtocolError."""
    size = len(frame) if isinstance(frame, bytes) else len(frame.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes exceeds the limit of {max_bytes}", "too_big")
    try:
        body = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("message is not valid JSON", "bad_message") from exc
    if not isinstance(body, dict):
        raise ProtocolError("message is not a JSON object", "bad_message")
    kind = body.get("type")
    by_type = {cls.TYPE: cls for cls in allowed}
    cls = by_type.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unexpected message type {str(kind)[:40]!r}", "bad_message")
    value = _from_wire(cls, body, cls.TYPE)
    assert isinstance(value, Message)
    return value


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_wire(tp: Any, raw: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if raw is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _from_wire(inner[0], raw, path)
    if origin is list:
        if not isinstance(raw, list):
            raise ProtocolError(f"{path} must be a list", "bad_message")
        (item,) = get_args(tp)
        return [_from_wire(item, v, f"{path}[{i}]") for i, v in enumerate(raw)]
    if origin is dict:
        if not isinstance(raw, dict):
            raise ProtocolError(f"{path} must be an object", "bad_message")
        _, item = get_args(tp)
        return {str(k): _from_wire(item, v, f"{path}.{k}") for k, v in raw.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(raw, dict):
            raise ProtocolError(f"{path} must be an object", "bad_message")
        hints = _hints(tp)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(tp):
            if f.name in raw:
                kwargs[f.name] = _from_wire(hints[f.name], raw[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{path}.{f.name} is missing", "bad_message")
        return tp(**kwargs)
    return _scalar(tp, raw, path)


def _scalar(tp: Any, raw: Any, path: str) -> Any:
    if tp is bytes:
        if not isinstance(raw, str):
            raise ProtocolError(f"{path} must be base64 text", "bad_message")
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(f"{path} is not valid base64", "bad_message") from exc
    if tp is bool:
        if not isinstance(raw, bool):
            raise ProtocolError(f"{path} must be a boolean", "bad_message")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ProtocolError(f"{path} must be an integer", "bad_message")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ProtocolError(f"{path} must be a number", "bad_message")
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise ProtocolError(f"{path} must be a string", "bad_message")
        return raw
    raise ProtocolError(f"{path} has an unsupported type", "bad_message")
