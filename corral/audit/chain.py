"""The audit chain (pure): canonical encoding, keyed hashes, signed checkpoints, verification.

Record n's hash is HMAC-SHA256(key, hash(n-1) + "\\n" + canonical JSON of record n,
including its sequence number). The key lives outside the database, so someone who
can edit the database can neither recompute the chain after an edit nor forge a
checkpoint. A checkpoint states "the chain held COUNT records ending in HEAD" and is
signed with an Ed25519 key derived from the same secret; checkpoints are written to
a file outside the database as well, so deleting records from the end (truncation)
is detected too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from corral.store.records import AuditEntry, AuditRecordRow, CheckpointRecord

GENESIS = "0" * 64
KEY_BYTES = 32
_SIGNING_LABEL = b"corral audit checkpoint signing key v1"


def canonical(seq: int, entry: AuditEntry) -> bytes:
    """The exact bytes a record's hash covers (sorted keys, no spaces, UTF-8)."""
    body = {
        "seq": seq,
        "time_us": entry.time_us,
        "request_id": entry.request_id,
        "principal": entry.principal,
        "token_id": entry.token_id,
        "action": entry.action,
        "resources": entry.resources,
        "source": entry.source,
        "outcome": entry.outcome,
        "error": entry.error,
        "grant_id": entry.grant_id,
        "details": entry.details,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(key: bytes, previous: str, seq: int, entry: AuditEntry) -> str:
    """Record `seq`'s hash given the previous record's."""
    return hmac.new(
        key, previous.encode() + b"\n" + canonical(seq, entry), hashlib.sha256
    ).hexdigest()


def chain(
    key: bytes, previous: str, first_seq: int, entries: Iterable[AuditEntry]
) -> list[AuditRecordRow]:
    """Number and hash `entries` after the record whose hash is `previous`."""
    rows = []
    for offset, entry in enumerate(entries):
        previous = chain_hash(key, previous, first_seq + offset, entry)
        rows.append(AuditRecordRow(first_seq + offset, entry, previous))
    return rows


class CheckpointSigner:
    """Signs and checks checkpoints with an Ed25519 key derived from the audit key."""

    def __init__(self, key: bytes) -> None:
        seed = hmac.new(key, _SIGNING_LABEL, hashlib.sha256).digest()
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key: Ed25519PublicKey = self._private.public_key()

    @property
    def public_key_hex(self) -> str:
        """The raw public key, hex: publish it to let others check checkpoints."""
        return self.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    @staticmethod
    def message(count: int, head_hash: str, time_us: int) -> bytes:
        """What a checkpoint signature covers."""
        return f"corral-audit-checkpoint\n{count}\n{head_hash}\n{time_us}".encode()

    def sign(self, count: int, head_hash: str, time_us: int) -> CheckpointRecord:
        """A signed checkpoint."""
        signature = self._private.sign(self.message(count, head_hash, time_us)).hex()
        return CheckpointRecord(count, head_hash, time_us, signature)

    def valid(self, checkpoint: CheckpointRecord) -> bool:
        """Whether the checkpoint's signature is ours."""
        try:
            self.public_key.verify(
                bytes.fromhex(checkpoint.signature),
                self.message(checkpoint.count, checkpoint.head_hash, checkpoint.time_us),
            )
        except (InvalidSignature, ValueError):
            return False
        return True


def checkpoint_line(checkpoint: CheckpointRecord) -> str:
    """One line of the checkpoint file."""
    return json.dumps(
        {
            "count": checkpoint.count,
            "head_hash": checkpoint.head_hash,
            "time_us": checkpoint.time_us,
            "signature": checkpoint.signature,
        },
        sort_keys=True,
    )


def parse_checkpoint_line(line: str) -> CheckpointRecord | None:
    """A checkpoint from one file line; None when the line is not one."""
    try:
        data = json.loads(line)
        return CheckpointRecord(
            int(data["count"]), str(data["head_hash"]), int(data["time_us"]), str(data["signature"])
        )
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(slots=True)
class Problem:
    """The first thing found wrong, naming the record."""

    seq: int
    message: str


@dataclass(slots=True)
class ChainVerifier:
    """Feed records in sequence order; the first problem is kept.

    `checkpoints` maps a record count to the head hash a valid, signed checkpoint
    recorded for it. `known_count` is how many records the running server knows it
    wrote (a truncation of the newest records since the last checkpoint shows there).
    """

    key: bytes
    checkpoints: Mapping[int, str] = field(default_factory=dict)
    known_count: int = 0
    known_head: str | None = None
    count: int = 0
    head: str = GENESIS
    problem: Problem | None = None

    def feed(self, row: AuditRecordRow) -> bool:
        """Check one record; False once a problem has been found."""
        if self.problem is not None:
            return False
        expected = self.count + 1
        if row.seq != expected:
            if row.seq > expected:
                missing = f"{expected}" if row.seq == expected + 1 else f"{expected}-{row.seq - 1}"
                self.problem = Problem(expected, f"record {missing} is missing (next is {row.seq})")
            else:
                self.problem = Problem(row.seq, f"record {row.seq} is out of order or repeated")
            return False
        if chain_hash(self.key, self.head, row.seq, row.entry) != row.hash:
            self.problem = Problem(
                row.seq,
                f"record {row.seq} does not match its hash: it was edited, "
                "or records around it were swapped or removed",
            )
            return False
        self.count, self.head = row.seq, row.hash
        checkpoint_head = self.checkpoints.get(row.seq)
        if checkpoint_head is not None and checkpoint_head != row.hash:
            self.problem = Problem(row.seq, f"record {row.seq} differs from the signed checkpoint")
            return False
        return True

    def finish(self) -> Problem | None:
        """After the last record: checks for records missing from the end."""
        if self.problem is not None:
            return self.problem
        newest_checkpoint = max(self.checkpoints, default=0)
        if newest_checkpoint > self.count:
            self.problem = Problem(
                self.count + 1,
                f"records {self.count + 1}-{newest_checkpoint} are missing: a signed checkpoint "
                f"covers {newest_checkpoint} records but the log ends at {self.count}",
            )
        elif self.known_count > self.count:
            self.problem = Problem(
                self.count + 1,
                f"records {self.count + 1}-{self.known_count} are missing: this server wrote "
                f"{self.known_count} records but the log ends at {self.count}",
            )
        elif (
            self.known_count
            and self.known_count == self.count
            and self.known_head is not None
            and self.known_head != self.head
        ):
            self.problem = Problem(
                self.count, f"record {self.count} differs from the last one written"
            )
        return self.problem
