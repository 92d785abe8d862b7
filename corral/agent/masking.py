"""Masking secrets in captured output on the agent, before the output leaves the node.

An invocation whose Invoke carries `mask` (the values of its `{{ssm-secure:...}}`
references) has every occurrence of any of those values in its stdout and stderr
replaced, byte for byte, by `*`. Pure logic, standard library only.

Rules:
* Secrets are matched as the UTF-8 bytes of their values. Every occurrence counts,
  overlapping and nested ones too: the bytes masked are the union of all occurrences
  of all secrets (so "longest match wins" holds trivially: a longer secret covering a
  shorter one masks all of it).
* **Same length.** A secret of N bytes becomes N `*` bytes. The agent and the server
  address output by byte offsets in the raw stream: `Output.offset`, `OutputRewind`,
  the Result's byte totals and the server's deduplication of re-sent chunks all use
  them. With a length-preserving mask, offset X of the masked stream *is* offset X of
  the raw stream on the node's disk, so none of that machinery changes. (A fixed
  placeholder such as `***` would make the two streams' offsets drift apart, and the
  agent would have to keep a map between them that survives restarts.) The length
  of a secret is disclosed; its content is not.
* **Deterministic.** Each output byte depends only on the raw stream: byte p is
  masked iff an occurrence of some secret covers p. Such an occurrence starts after
  p - L (L: the longest secret's length in bytes) and ends before p + L, so the
  decision needs at most L - 1 bytes on either side of p.
* **Chunk-safe.** `Masker.feed` releases only bytes whose decision is final: it holds
  back the suffix starting at the earliest position whose remaining bytes are a
  proper prefix of some secret (the only bytes a later chunk could still turn into
  part of an occurrence), at most L - 1 bytes. Any other byte before the end is
  decided: an occurrence covering it either lies entirely in the bytes seen (found,
  or carried over from an earlier chunk as "covered until") or would have to start
  at a held-back position. `finish` (end of stream) releases the rest. Hence, for
  any split of the raw stream into chunks, the concatenated output equals masking
  the whole stream at once, and the output never contains a secret (unless the
  secret itself contains `*`: "a*" stays visible in the masked "aa*" -> "a**").
* **Rewind.** To produce the masked stream from raw offset X (a reconnect, an
  `OutputRewind`, an agent restart), `Masker(secrets, start=X)` is fed the raw stream
  from `position` = max(0, X - (L - 1)) and drops its output before X: an occurrence
  starting before that context ends before X, so it cannot affect any byte >= X. The
  bytes from X on are therefore exactly those sent before.
* Finding occurrences uses `bytes.find` (C speed); a run of overlapping occurrences of
  a periodic secret (`aaaa`, `abab`) is measured by comparing the text with itself
  shifted by the period (galloping `startswith`) instead of finding each occurrence
  again, so a pathological stream does not cost time quadratic in the secret length.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = b"*"


class _Secret:
    """One secret's bytes, with its period (worked out when it first occurs)."""

    __slots__ = ("first", "length", "period", "step", "value")

    def __init__(self, value: bytes) -> None:
        self.value = value
        self.length = len(value)
        self.first = value[:1]
        self.period = 0
        self.step = 0

    def learn_period(self) -> None:
        """Work out the period p and how far past a run's last occurrence the next can be."""
        m = self.length
        self.period = p = _smallest_period(self.value)
        # The next occurrence after a run's last one, q, starts at q + step or later: its
        # distance d to q is a period of the value (or d >= m), and d <= m - p would make
        # p divide d (Fine and Wilf), so q + p would be an occurrence: the run went on.
        self.step = max(p, m - p + 1)


def _smallest_period(value: bytes) -> int:
    """The smallest p >= 1 with value[i] == value[i + p] for every i (len(value) if none)."""
    view = memoryview(value)
    p = value.find(value[:1], 1)
    while p != -1:
        if value.startswith(view[p:]):
            return p
        p = value.find(value[:1], p + 1)
    return len(value)


def _run_periods(data: bytes, view: memoryview, start: int, p: int) -> int:
    """How many whole periods p the text keeps repeating from `start` on.

    The largest k with data[j] == data[j - p] for every j in [start, start + k * p),
    found by galloping: O(log k) comparisons, each one `startswith` in C.
    """
    n = len(data)
    k = 0
    step = 1
    while step:
        at = start + k * p
        step = min(step, (n - at) // p)
        if not step:
            break
        if data.startswith(view[at - p : at - p + step * p], at):
            k += step
            step *= 2
        else:
            step //= 2
    return k


class Secrets:
    """The secrets of one invocation, prepared once and shared by its maskers."""

    __slots__ = ("_secrets", "max_len")

    def __init__(self, values: Iterable[str | bytes]) -> None:
        unique = {v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values}
        self._secrets = tuple(_Secret(v) for v in sorted(unique, key=lambda v: (-len(v), v)) if v)
        self.max_len = max((s.length for s in self._secrets), default=0)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def __len__(self) -> int:
        return len(self._secrets)

    def __repr__(self) -> str:
        return f"<Secrets: {len(self._secrets)} values>"  # never the values

    def occurrences(self, data: bytes) -> list[tuple[int, int]]:
        """Merged, sorted [start, end) ranges of `data` covered by occurrences of any secret."""
        ranges: list[tuple[int, int]] = []
        view = memoryview(data)
        for secret in self._secrets:
            value, m = secret.value, secret.length
            i = data.find(value)
            if i == -1:
                continue
            if not secret.period:
                secret.learn_period()
            p, step = secret.period, secret.step
            while i != -1:
                # Occurrences at i, i + p, ..., q while the text repeats with period p.
                q = i + p * _run_periods(data, view, i + m, p)
                ranges.append((i, q + m))
                i = data.find(value, q + step)
        if len(ranges) <= 1:
            return ranges
        ranges.sort()
        merged = [ranges[0]]
        for start, end in ranges[1:]:
            last_start, last_end = merged[-1]
            if start <= last_end:
                if end > last_end:
                    merged[-1] = (last_start, end)
            else:
                merged.append((start, end))
        return merged

    def partial_start(self, data: bytes, limit: int) -> int:
        """The earliest i < `limit` such that data[i:] is a proper prefix of a secret, else `limit`.

        Only the last `max_len - 1` bytes can start such a prefix.
        """
        n = len(data)
        best = limit
        view = memoryview(data)
        for secret in self._secrets:
            if secret.length < 2:
                continue
            first, value = secret.first, secret.value
            i = data.find(first, max(0, n - secret.length + 1), best)
            while i != -1:
                if value.startswith(view[i:]):
                    best = i
                    break
                i = data.find(first, i + 1, best)
        return best


class Masker:
    """Masks one output stream fed in consecutive chunks of raw bytes.

    `Masker(secrets, start=X)` produces the masked stream from raw offset X: feed it the
    raw stream from `position` on (the context before X it needs), in chunks of any
    size; `feed` and `finish` return the next masked bytes, which begin at `released`.
    """

    __slots__ = ("_buf", "_buf_start", "_covered_until", "_done", "_secrets", "_start")

    def __init__(self, secrets: Secrets, start: int = 0) -> None:
        if start < 0:
            raise ValueError("start must not be negative")
        self._secrets = secrets
        self._start = start
        # Raw bytes not released yet (held back, or context before `start`), from _buf_start.
        self._buf = b""
        self._buf_start = max(0, start - max(0, secrets.max_len - 1))
        # Bytes before this offset are covered by occurrences found in earlier chunks.
        self._covered_until = self._buf_start
        self._done = False

    @property
    def position(self) -> int:
        """Raw offset of the next byte to feed."""
        return self._buf_start + len(self._buf)

    @property
    def released(self) -> int:
        """Offset (raw and masked alike) of the next byte `feed` or `finish` returns."""
        return max(self._buf_start, self._start)

    @property
    def pending(self) -> int:
        """Raw bytes fed but not released yet (held back or context): under `max_len`."""
        return len(self._buf)

    @property
    def finished(self) -> bool:
        """True once `finish` was called."""
        return self._done

    def feed(self, data: bytes) -> bytes:
        """Take the next raw bytes; return the masked bytes that are now final."""
        if self._done:
            raise ValueError("the stream was finished")
        return self._release(self._buf + data, hold=True)

    def finish(self) -> bytes:
        """End of stream: return every byte still held back, masked."""
        if self._done:
            return b""
        self._done = True
        return self._release(self._buf, hold=False)

    def _release(self, buf: bytes, hold: bool) -> bytes:
        """Mask and return buf[:cut]; keep buf[cut:] (cut: where a partial match starts)."""
        base = self._buf_start
        secrets = self._secrets
        if not secrets:
            self._buf_start = base + len(buf)
            skip = self._start - base
            return buf[skip:] if skip > 0 else buf
        n = len(buf)
        ranges = secrets.occurrences(buf)
        cut = secrets.partial_start(buf, n) if hold else n
        out = bytearray(buf[:cut])
        # Bytes covered by occurrences that began before this buffer (a prefix of it).
        carried = min(self._covered_until - base, cut)
        if carried > 0:
            out[:carried] = MASK * carried
        for start, end in ranges:
            if start >= cut:
                # Entirely held back: found again, with what follows, in the next call.
                break
            self._covered_until = max(self._covered_until, base + end)
            end = min(end, cut)
            out[start:end] = MASK * (end - start)
        self._buf = buf[cut:]
        self._buf_start = base + cut
        skip = min(cut, self._start - base)
        if skip > 0:
            del out[:skip]
        return bytes(out)


def mask(data: bytes, secrets: Secrets) -> bytes:
    """The whole stream `data`, masked (the reference every chunking must agree with)."""
    masker = Masker(secrets)
    return masker.feed(data) + masker.finish()
