"""The audit chain (pure): edits, deletions, swaps and truncation are found and named."""

from __future__ import annotations

import dataclasses

from corral.audit.chain import (
    GENESIS,
    ChainVerifier,
    CheckpointSigner,
    chain,
    checkpoint_line,
    parse_checkpoint_line,
)
from corral.store import AuditEntry, AuditRecordRow

KEY = bytes(range(32))


def entries(n: int) -> list[AuditEntry]:
    return [
        AuditEntry(
            time_us=1_700_000_000_000_000 + i,
            request_id=f"req-{i}",
            principal="user:alice",
            action="command:Send",
            outcome="allowed",
            resources=[f"node:mi-{i:017x}"],
            details={"i": i},
        )
        for i in range(1, n + 1)
    ]


def verify(rows: list[AuditRecordRow], **kwargs: object) -> str | None:
    verifier = ChainVerifier(KEY, **kwargs)  # type: ignore[arg-type]
    for row in rows:
        if not verifier.feed(row):
            break
    problem = verifier.finish()
    return None if problem is None else f"{problem.seq}: {problem.message}"


def test_an_intact_chain_verifies_and_depends_on_the_key() -> None:
    rows = chain(KEY, GENESIS, 1, entries(5))
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert verify(rows) is None
    other = ChainVerifier(b"x" * 32)
    assert not other.feed(rows[0])
    # Appending later continues the same chain.
    more = chain(KEY, rows[-1].hash, 6, entries(2))
    assert verify(rows + more) is None


def test_an_edited_record_is_named() -> None:
    rows = chain(KEY, GENESIS, 1, entries(5))
    edited = dataclasses.replace(rows[2].entry, outcome="denied")
    rows[2] = AuditRecordRow(3, edited, rows[2].hash)
    assert verify(rows) == (
        "3: record 3 does not match its hash: it was edited, "
        "or records around it were swapped or removed"
    )


def test_a_deleted_record_is_named() -> None:
    rows = chain(KEY, GENESIS, 1, entries(5))
    del rows[1]
    assert verify(rows) == "2: record 2 is missing (next is 3)"


def test_swapped_records_are_found() -> None:
    rows = chain(KEY, GENESIS, 1, entries(5))
    # Swap the contents of records 2 and 4 but keep their positions (sequence numbers).
    rows[1], rows[3] = (
        AuditRecordRow(2, rows[3].entry, rows[3].hash),
        AuditRecordRow(4, rows[1].entry, rows[1].hash),
    )
    assert verify(rows).startswith("2: record 2 does not match its hash")  # type: ignore[union-attr]
    # Or swap whole rows including their numbers (an ORDER BY seq puts them back, so
    # simulate a reader that trusts storage order).
    rows = chain(KEY, GENESIS, 1, entries(5))
    rows[1], rows[2] = rows[2], rows[1]
    assert verify(rows) == "2: record 2 is missing (next is 3)"


def test_truncation_is_found_by_checkpoints_and_by_the_running_server() -> None:
    rows = chain(KEY, GENESIS, 1, entries(6))
    signer = CheckpointSigner(KEY)
    checkpoint = signer.sign(5, rows[4].hash, 123)
    assert signer.valid(checkpoint)
    assert parse_checkpoint_line(checkpoint_line(checkpoint)) == checkpoint
    assert verify(rows, checkpoints={5: rows[4].hash}) is None
    assert verify(rows[:3], checkpoints={5: rows[4].hash}) == (
        "4: records 4-5 are missing: a signed checkpoint covers 5 records but the log ends at 3"
    )
    assert verify(rows[:5], known_count=6, known_head=rows[5].hash) == (
        "6: records 6-6 are missing: this server wrote 6 records but the log ends at 5"
    )


def test_checkpoints_cannot_be_forged_or_rewritten() -> None:
    signer = CheckpointSigner(KEY)
    checkpoint = signer.sign(5, "a" * 64, 123)
    assert not signer.valid(dataclasses.replace(checkpoint, count=4))
    assert not signer.valid(dataclasses.replace(checkpoint, signature="00" * 64))
    assert not signer.valid(dataclasses.replace(checkpoint, signature="zz"))
    assert not CheckpointSigner(b"y" * 32).valid(checkpoint)
    assert parse_checkpoint_line("{not json") is None
    # A rewritten chain that differs from a checkpoint is named at that record.
    rows = chain(KEY, GENESIS, 1, entries(3))
    assert (
        verify(rows, checkpoints={2: "b" * 64}) == "2: record 2 differs from the signed checkpoint"
    )
