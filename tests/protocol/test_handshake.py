"""The handshake admits only a holder of the node key, once per nonce."""

import pytest
from nacl.signing import SigningKey

from corral.errors import ProtocolError
from corral.protocol import (
    SERVER_MESSAGES,
    Accepted,
    Auth,
    ChannelState,
    Heartbeat,
    Hello,
    NodeInfo,
    ServerChannel,
    auth_payload,
    decode,
    encode,
)

NODE = "mi-0123456789abcdef0"
INFO = NodeInfo("h", "Linux", "debian", "12", "6.1", "x86_64", [], "0.1.0")
KEY = SigningKey.generate()
KEYS = {NODE: bytes(KEY.verify_key)}


def verify(node_id: str, payload: bytes, signature: bytes) -> bool:
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    key = KEYS.get(node_id)
    if key is None:
        return False
    try:
        VerifyKey(key).verify(payload, signature)
    except BadSignatureError:
        return False
    return True


def auth_frame(channel: ServerChannel, key: SigningKey = KEY, node_id: str = NODE) -> str:
    hello = decode(channel.hello(), SERVER_MESSAGES)
    assert isinstance(hello, Hello)
    signature = key.sign(auth_payload(hello.nonce, node_id)).signature
    return encode(Auth(node_id, signature, 1, INFO))


def test_valid_signature_is_admitted() -> None:
    channel = ServerChannel(verify)
    message = channel.receive(auth_frame(channel))
    assert isinstance(message, Auth)
    assert channel.state is ChannelState.READY
    assert channel.node_id == NODE
    assert channel.receive(encode(Heartbeat())) == Heartbeat()


@pytest.mark.parametrize(
    ("key", "node_id"),
    [(SigningKey.generate(), NODE), (KEY, "mi-ffffffffffffffff0")],
    ids=["wrong-key", "unknown-node"],
)
def test_wrong_key_or_node_is_refused(key: SigningKey, node_id: str) -> None:
    channel = ServerChannel(verify)
    with pytest.raises(ProtocolError) as info:
        channel.receive(auth_frame(channel, key, node_id))
    assert info.value.code == "auth_failed"
    assert channel.state is ChannelState.CLOSED


def test_replayed_handshake_fails_on_a_new_connection() -> None:
    first = ServerChannel(verify)
    recorded = auth_frame(first)
    first.receive(recorded)
    second = ServerChannel(verify)
    second.hello()
    with pytest.raises(ProtocolError, match="authentication failed"):
        second.receive(recorded)


def test_work_before_auth_is_refused() -> None:
    channel = ServerChannel(verify)
    channel.hello()
    with pytest.raises(ProtocolError) as info:
        channel.receive(encode(Accepted("c")))
    assert info.value.code == "auth_required"
    with pytest.raises(ProtocolError):
        channel.receive(encode(Heartbeat()))


def test_second_auth_is_refused() -> None:
    channel = ServerChannel(verify)
    frame = auth_frame(channel)
    channel.receive(frame)
    with pytest.raises(ProtocolError, match="already authenticated"):
        channel.receive(frame)


def test_unsupported_protocol_version_is_refused() -> None:
    channel = ServerChannel(verify)
    hello = decode(channel.hello(), SERVER_MESSAGES)
    assert isinstance(hello, Hello)
    signature = KEY.sign(auth_payload(hello.nonce, NODE)).signature
    with pytest.raises(ProtocolError) as info:
        channel.receive(encode(Auth(NODE, signature, 99, INFO)))
    assert info.value.code == "bad_version"
