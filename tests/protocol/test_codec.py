"""The codec refuses anything that is not exactly a known, well-typed message."""

import json

import pytest

from corral.errors import ProtocolError
from corral.protocol import (
    AGENT_MESSAGES,
    SERVER_MESSAGES,
    Accepted,
    Auth,
    Cancel,
    Heartbeat,
    Invoke,
    NodeInfo,
    Output,
    Result,
    Step,
    StepResult,
    decode,
    encode,
)

INFO = NodeInfo(
    hostname="web-1",
    platform_type="Linux",
    platform_name="debian",
    platform_version="12",
    kernel="6.1.0",
    arch="x86_64",
    ip_addresses=["10.0.0.5", "fe80::1"],
    agent_version="0.1.0",
)


@pytest.mark.parametrize(
    ("message", "allowed"),
    [
        (
            Invoke("c1", [Step("s", "echo hi", {"A": "1"}, "/tmp", 30, "continue")], 10),
            SERVER_MESSAGES,
        ),
        (Cancel("c1"), SERVER_MESSAGES),
        (Auth("mi-0123456789abcdef0", b"\x00\xff" * 32, 1, INFO), AGENT_MESSAGES),
        (Heartbeat(), AGENT_MESSAGES),
        (Accepted("c1"), AGENT_MESSAGES),
        (Output("c1", "stdout", 7, b"\x00\xff\xfe raw"), AGENT_MESSAGES),
        (
            Result(
                "c1", "Failed", "Failed", 3, 10, 0, [StepResult("s", "Failed", 3)], 1.5, 2.5, "x"
            ),
            AGENT_MESSAGES,
        ),
    ],
)
def test_round_trip(message: object, allowed: tuple[type, ...]) -> None:
    assert decode(encode(message), allowed) == message  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"type": "nope"}', "unexpected message type"),
        ('{"type": "invoke", "steps": []}', "invoke.command_id is missing"),
        ('{"type": "accepted", "command_id": 5}', "must be a string"),
        (
            '{"type": "output", "command_id": "c", "stream": "stdout", "offset": true, "data": ""}',
            "must be an integer",
        ),
        (
            '{"type": "output", "command_id": "c", "stream": "stdout", "offset": 0, "data": "***"}',
            "not valid base64",
        ),
        (
            '{"type": "result", "command_id": "c", "status": "Success",'
            ' "status_details": "Success", "response_code": 0,'
            ' "stdout_bytes": 0, "stderr_bytes": 0, "steps": {}}',
            "must be a list",
        ),
    ],
)
def test_malformed_frames_are_refused_with_a_reason(frame: str, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode(frame, AGENT_MESSAGES + SERVER_MESSAGES)


def test_server_messages_are_not_accepted_from_an_agent() -> None:
    with pytest.raises(ProtocolError, match="unexpected message type"):
        decode(encode(Cancel("c1")), AGENT_MESSAGES)


def test_oversized_frame_is_refused_before_parsing() -> None:
    frame = json.dumps({"type": "heartbeat", "pad": "x" * 2000})
    with pytest.raises(ProtocolError) as info:
        decode(frame, AGENT_MESSAGES, max_bytes=1000)
    assert info.value.code == "too_big"


def test_unknown_fields_from_a_newer_peer_are_ignored() -> None:
    assert decode('{"type": "accepted", "command_id": "c", "new": 1}', AGENT_MESSAGES) == Accepted(
        "c"
    )


def test_public_surface_is_pinned() -> None:
    import corral.protocol

    # Changing the public surface of the protocol is a deliberate act: update this list.
    assert sorted(corral.protocol.__all__) == [
        "AGENT_MESSAGES", "Accepted", "Auth", "Cancel", "ChannelState",
        "DEFAULT_MAX_MESSAGE_BYTES", "DEFAULT_OUTPUT_CHUNK_BYTES", "Detail", "ErrorMessage",
        "Heartbeat", "Hello", "Invoke", "Message", "NodeInfo", "Output", "OutputRewind",
        "PROTOCOL_VERSION", "Result", "ResultAck", "SERVER_MESSAGES", "ServerChannel", "Status",
        "Step", "StepResult", "Welcome", "auth_payload", "can_transition", "command_status",
        "counts_as_error", "decode", "encode", "is_final", "transition",
    ]  # fmt: skip
    for name in corral.protocol.__all__:
        assert hasattr(corral.protocol, name)


# --- Invoke.mask: the secret values the agent masks in captured output -------------


def test_invoke_mask_round_trips_and_defaults_to_empty() -> None:
    invoke = Invoke(
        "c1", [Step("s", "echo hi")], None, ["s3cr3t", "p\u00e4ss \U0001f511", "x" * 8192]
    )
    assert decode(encode(invoke), SERVER_MESSAGES) == invoke
    # An older server omits the field.
    old = '{"type": "invoke", "command_id": "c1", "steps": []}'
    decoded = decode(old, SERVER_MESSAGES)
    assert isinstance(decoded, Invoke)
    assert decoded.mask == []
    at_limit = Invoke("c1", [], mask=[f"v{i}" for i in range(100)])
    assert decode(encode(at_limit), SERVER_MESSAGES) == at_limit


def test_invoke_mask_values_never_show_in_its_repr() -> None:
    invoke = Invoke("c1", [], mask=["hunter2-secret"])
    assert "hunter2-secret" not in repr(invoke)
    assert "hunter2-secret" not in str(invoke)


def _invoke_frame(mask: object) -> str:
    return json.dumps({"type": "invoke", "command_id": "c1", "steps": [], "mask": mask})


@pytest.mark.parametrize(
    ("mask", "reason"),
    [
        ("secret", r"invoke\.mask must be a list"),
        ({"a": "b"}, r"invoke\.mask must be a list"),
        ([f"v{i}" for i in range(101)], r"invoke\.mask has more than 100 items"),
        (["ok", ""], r"invoke\.mask\[1\] must have 1 to 8192 characters"),
        (["x" * 8193], r"invoke\.mask\[0\] must have 1 to 8192 characters"),
        (["ok", 5], r"invoke\.mask\[1\] must be a string"),
        ([None], r"invoke\.mask\[0\] must be a string"),
        (None, r"invoke\.mask must be a list"),
    ],
)
def test_invoke_mask_limits_are_enforced_on_decode(mask: object, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        decode(_invoke_frame(mask), SERVER_MESSAGES)
    assert info.value.code == "bad_message"


def test_invoke_mask_refuses_text_that_is_not_utf8() -> None:
    # JSON can carry a lone surrogate, which has no UTF-8 encoding to match on.
    frame = '{"type": "invoke", "command_id": "c1", "steps": [], "mask": ["ok", "\\ud800x"]}'
    with pytest.raises(ProtocolError, match=r"invoke\.mask\[1\] is not valid UTF-8 text"):
        decode(frame, SERVER_MESSAGES)


def test_mask_limits_count_characters_not_bytes() -> None:
    # 8192 four-byte characters: 32 KiB of UTF-8, still within the limit.
    invoke = Invoke("c1", [], mask=["\U0001f511" * 8192])
    assert decode(encode(invoke), SERVER_MESSAGES) == invoke
