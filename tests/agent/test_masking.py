"""The output masker (pure logic): any chunking, any rewind, same bytes as masking at once."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.agent.masking import Masker, Secrets, mask


def reference(data: bytes, secrets: list[bytes]) -> bytes:
    """Masking by definition: every byte covered by any occurrence of any secret is `*`."""
    covered = [False] * len(data)
    for secret in secrets:
        if not secret:
            continue
        for i in range(len(data) - len(secret) + 1):
            if data.startswith(secret, i):
                covered[i : i + len(secret)] = [True] * len(secret)
    return bytes(ord("*") if c else b for c, b in zip(covered, data, strict=True))


def feed_in_chunks(masker: Masker, data: bytes, cuts: list[int]) -> list[bytes]:
    """Feed `data` split at `cuts`, then finish; the pieces returned."""
    pieces = []
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        pieces.append(masker.feed(data[last:cut]))
        last = cut
    pieces.append(masker.finish())
    return pieces


# --- examples -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("secrets", "data", "masked"),
    [
        ([b"hunter2"], b"pw=hunter2\n", b"pw=*******\n"),
        ([b"hunter2"], b"hunter2hunter2", b"*" * 14),
        ([b"hunter2"], b"hunter", b"hunter"),  # a prefix only, at the end of the stream
        ([b"abab"], b"xababab", b"x******"),  # overlapping occurrences
        ([b"aa"], b"aaa", b"***"),
        ([b"pass", b"password"], b"password: pass!", b"********: ****!"),  # nested
        ([b"secret", b"retry"], b"secretry", b"********"),  # one runs into the other
        ([b"xaby", b"ab"], b"xabz", b"x**z"),
        ([b"x"], b"axbxc", b"a*b*c"),  # one-byte secrets
        ([], b"nothing to hide", b"nothing to hide"),
        (["p\u00e4ss\U0001f511"], "a p\u00e4ss\U0001f511 b".encode(), b"a " + b"*" * 9 + b" b"),
    ],
)
def test_examples(secrets: list[str | bytes], data: bytes, masked: bytes) -> None:
    result = mask(data, Secrets(secrets))
    assert result == masked
    assert len(result) == len(data)


def test_nothing_that_cannot_belong_to_a_secret_is_held_back() -> None:
    masker = Masker(Secrets([b"secret"]))
    assert masker.feed(b"hello ") == b"hello "
    assert masker.feed(b"world sec") == b"world "  # "sec" may become the secret
    assert masker.pending == 3
    assert masker.feed(b"ret and sec") == b"****** and "
    assert masker.feed(b"ond\n") == b"second\n"  # it did not
    assert masker.pending == 0
    assert masker.feed(b"se") == b""
    assert masker.finish() == b"se"
    assert masker.finished
    with pytest.raises(ValueError, match="finished"):
        masker.feed(b"more")


def test_an_occurrence_found_earlier_still_covers_bytes_held_back() -> None:
    # "abc" is complete, but its "c" may also start "cdXY": held back, and masked when released.
    masker = Masker(Secrets([b"abc", b"cdXY"]))
    assert masker.feed(b"-abc") == b"-**"
    assert masker.feed(b"d-") == b"*d-"


def test_rewind_drops_the_context_it_needs() -> None:
    secrets = Secrets([b"0123456789"])
    data = b"xx0123456789yy"
    masker = Masker(secrets, start=5)
    assert (masker.position, masker.released) == (0, 5)
    assert masker.feed(data[:7]) == b""  # context only
    assert masker.feed(data[7:]) + masker.finish() == b"*******yy"
    with pytest.raises(ValueError, match="negative"):
        Masker(secrets, start=-1)


def test_secrets_are_deduplicated_and_never_in_their_repr() -> None:
    secrets = Secrets(["hunter2", b"hunter2", "", "x"])
    assert len(secrets) == 2
    assert secrets.max_len == 7
    assert "hunter2" not in repr(secrets)
    assert not Secrets([])


def test_pathological_streams_take_linear_time() -> None:
    cases = [
        ([b"a" * 1000], b"a" * 2_000_000),  # one long run of overlapping occurrences
        ([b"ab" * 4000], b"ab" * 1_000_000),
        ([b"a" * 500 + b"b" + b"a" * 500], b"a" * 2_000_000),  # never quite a match
        ([b"a" * 32767 + b"b"], b"a" * 2_000_000),  # the longest secret the protocol allows
    ]
    for values, data in cases:
        secrets = Secrets(values)
        began = time.perf_counter()
        masker = Masker(secrets)
        out = [masker.feed(data[i : i + 65536]) for i in range(0, len(data), 65536)]
        out.append(masker.finish())
        assert time.perf_counter() - began < 2.0
        masked = b"".join(out)
        assert len(masked) == len(data)
        if data.count(values[0]):
            assert masked == b"*" * len(data)
        else:
            assert masked == data


# --- properties -----------------------------------------------------------------

# A small alphabet makes occurrences, overlaps and near misses frequent. `*` is left out
# of secrets: a secret made of `*` is "visible" in any masked output.
ALPHABET = b"ab\xc3-*"
secret_values = st.lists(
    st.binary(min_size=1, max_size=7).map(lambda b: bytes(ALPHABET[x % 4] for x in b)),
    min_size=0,
    max_size=4,
)
streams = st.binary(max_size=80).map(lambda b: bytes(ALPHABET[x % 5] for x in b))


@settings(max_examples=400, deadline=None, database=None)
@given(values=secret_values, data=streams, cuts=st.lists(st.integers(0, 80), max_size=12))
def test_any_chunking_equals_masking_at_once(
    values: list[bytes], data: bytes, cuts: list[int]
) -> None:
    secrets = Secrets(values)
    expected = reference(data, values)
    assert mask(data, secrets) == expected
    masker = Masker(secrets)
    pieces = feed_in_chunks(masker, data, [c for c in cuts if c <= len(data)])
    out = b"".join(pieces)
    assert out == expected
    assert len(out) == len(data)
    assert masker.released == len(data)
    for value in values:
        assert value not in out


@settings(max_examples=300, deadline=None, database=None)
@given(values=secret_values, data=streams, cuts=st.lists(st.integers(0, 80), max_size=12))
def test_only_final_bytes_are_released_and_at_most_max_len_minus_one_held(
    values: list[bytes], data: bytes, cuts: list[int]
) -> None:
    secrets = Secrets(values)
    expected = reference(data, values)
    masker = Masker(secrets)
    sent = b""
    last = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        sent += masker.feed(data[last:cut])
        last = cut
        # Whatever comes next, what was released is final...
        assert expected.startswith(sent)
        assert masker.released == len(sent)
        # ...and only a possible start of a secret is held back.
        assert masker.pending <= max(0, secrets.max_len - 1)
        assert masker.position == cut
        held = data[len(sent) : cut]
        assert not held or any(v.startswith(held) and v != held for v in values)


@settings(max_examples=300, deadline=None, database=None)
@given(
    values=secret_values,
    data=streams,
    cuts=st.lists(st.integers(0, 80), max_size=8),
    rewind=st.integers(0, 80),
)
def test_a_rewind_reproduces_the_bytes_sent_before(
    values: list[bytes], data: bytes, cuts: list[int], rewind: int
) -> None:
    secrets = Secrets(values)
    expected = reference(data, values)
    x = min(rewind, len(data))
    masker = Masker(secrets, start=x)
    assert masker.released == x
    assert masker.position == max(0, x - max(0, secrets.max_len - 1))
    rest = data[masker.position :]
    pieces = feed_in_chunks(masker, rest, [c for c in cuts if c <= len(rest)])
    assert b"".join(pieces) == expected[x:]


def test_exhaustively_every_split_in_two_and_three() -> None:
    values = [b"abab", b"ba", b"aab"]
    secrets = Secrets(values)
    data = b"-aababab-baab-abaab-aba"
    expected = reference(data, values)
    n = len(data)
    for i in range(n + 1):
        for j in range(i, n + 1):
            masker = Masker(secrets)
            out = masker.feed(data[:i]) + masker.feed(data[i:j]) + masker.feed(data[j:])
            assert out + masker.finish() == expected
        for start in range(n + 1):
            masker = Masker(secrets, start=start)
            tail = data[masker.position :]
            cut = min(i, len(tail))
            out = masker.feed(tail[:cut]) + masker.feed(tail[cut:]) + masker.finish()
            assert out == expected[start:]
