"""The journal of accepted command ids: what makes execution at-most-once.

Rules:
* An id is appended (`<epoch> <command_id>`) and fsynced before its worker starts.
* Once the worker runs, `<epoch> <command_id> worker <pid> <start_ticks> <boot_id>
  <started_at>` is appended (not fsynced: after a power loss the worker is gone anyway).
  Keeping it here instead of in a file per invocation saves a file creation.
* When the server acknowledges a result, `<epoch> <command_id> acked` is appended (not
  fsynced), so a re-delivery of an id whose files were lost can be told apart.
* A torn last line (no newline) is ignored on load and the journal is rewritten.
* Ids are kept for `retention` seconds (30 days by default), so a re-delivery long
  after an agent restart is still recognised; older ids are dropped on load.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from corral.agent.worker import WorkerRecord

logger = logging.getLogger(__name__)


class Journal:
    """Durable set of command ids this agent has accepted, with their workers."""

    def __init__(self, path: Path, retention: float, now: float | None = None) -> None:
        self._path = path
        self._ids: dict[str, float] = {}
        self._workers: dict[str, WorkerRecord] = {}
        self._acked: set[str] = set()
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._load(retention, time.time() if now is None else now)

    def _load(self, retention: float, now: float) -> None:
        try:
            text = self._path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return
        lines = text.split("\n")
        torn = lines.pop()  # after the last newline: empty unless the last write was torn
        if torn:
            logger.warning("ignoring a torn last line in %s", self._path)
        dropped = 0
        for line in lines:
            parts = line.split(" ")
            try:
                when = float(parts[0])
            except ValueError:
                continue
            if len(parts) < 2 or not parts[1]:
                continue
            if now - when > retention:
                dropped += 1
                continue
            command_id = parts[1]
            self._ids.setdefault(command_id, when)
            if len(parts) == 3 and parts[2] == "acked":
                self._acked.add(command_id)
            if len(parts) == 7 and parts[2] == "worker":
                try:
                    self._workers[command_id] = WorkerRecord(
                        int(parts[3]), int(parts[4]), parts[5], float(parts[6])
                    )
                except ValueError:
                    continue
        if dropped or torn:
            self._rewrite()

    def _rewrite(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        lines = []
        for cid, when in self._ids.items():
            lines.append(f"{when:.3f} {cid}\n")
            if cid in self._workers:
                lines.append(_worker_line(when, cid, self._workers[cid]))
            if cid in self._acked:
                lines.append(f"{when:.3f} {cid} acked\n")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, "".join(lines).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def worker(self, command_id: str) -> WorkerRecord | None:
        """The worker started for this id, if one was recorded."""
        return self._workers.get(command_id)

    def acked(self, command_id: str) -> bool:
        """True when the server acknowledged this id's result."""
        return command_id in self._acked

    def record_ack(self, command_id: str) -> None:
        """Remember that the server holds this id's result."""
        if command_id in self._ids and command_id not in self._acked:
            self._acked.add(command_id)
            self._append(f"{time.time():.3f} {command_id} acked\n", sync=False)

    def forget(self, command_id: str) -> None:
        """Drop an id that was never made durable (its journal write failed)."""
        self._ids.pop(command_id, None)

    def record(self, command_id: str) -> None:
        """Append the id and fsync it (a small blocking write, on purpose before the worker)."""
        when = self._ids.setdefault(command_id, time.time())
        self._append(f"{when:.3f} {command_id}\n", sync=True)

    def record_worker(self, command_id: str, record: WorkerRecord) -> None:
        """Remember which process runs this id."""
        self._workers[command_id] = record
        self._append(_worker_line(time.time(), command_id, record), sync=False)

    def _append(self, line: str, sync: bool) -> None:
        with self._lock:  # records are written from the event loop and from offload threads
            self._append_locked(line, sync)

    def _append_locked(self, line: str, sync: bool) -> None:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, line.encode("utf-8"))
        if sync:
            os.fdatasync(self._fd)

    def close(self) -> None:
        """Close the journal file (it reopens on the next write)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _worker_line(when: float, command_id: str, r: WorkerRecord) -> str:
    boot = r.boot_id or "-"
    return f"{when:.3f} {command_id} worker {r.pid} {r.start_ticks} {boot} {r.started_at:.6f}\n"
