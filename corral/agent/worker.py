"""Invocation workers: one detached bash process per invocation, state kept on disk.

Rules:
* Layout of `DIR/invocations/<command_id>/`:
  - `run.sh`: the wrapper, with every step's script, environment and working directory;
    its first line is a comment holding the Invoke as one line of JSON (so one file, not
    two, is written before the id is journaled and the worker starts);
  - `stdout`, `stderr`: every step's output, appended;
  - `progress`: `step N RC EPOCH` per finished step, then `done EPOCH`; a last line
    without its newline is half-written and ignored;
  - `kill`: why the agent killed the worker, written before the first signal;
  - `result.json`: the Result of a killed or dead worker (a finished worker's Result
    is derived from `progress` again after a restart).
* Few files per invocation on purpose: creating files is most of the per-invocation
  cost after the bash exec itself.
* An invocation with secrets (`Invoke.mask`) is scrubbed when acknowledged: `run.sh`
  emptied and the raw output removed at once, not when the directory is retired.
* An acknowledged invocation's directory is emptied (`run.sh` and `progress` are
  truncated, everything else removed) and moved to `DIR/spare/`; the next
  invocation's `run.sh` is overwritten in a spare, which is then renamed into place.
  Reusing inodes spares the file system its costliest work, allocating inodes (ext4
  scans past every recently deleted one) and freeing them. `progress` is safe to
  reuse: only the wrapper opens it, for one `printf` at a time, so nothing the
  script started holds it. Output files are never reused: a background process the
  script left behind may still hold them open. A directory holding anything
  unexpected is removed.
* The worker is started with posix_spawn in its own session (so its pid is its
  process group id), stdin /dev/null and stdout/stderr appended to the files; it is
  one bash exec and never the agent's Python.
* The worker's pid, /proc start time, boot id and start time go to the journal.
* A worker is alive when /proc/<pid>/stat exists, is not a zombie, has the recorded
  start time, and the boot id is the recorded one (a reboot kills every worker).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from corral.errors import ProtocolError
from corral.protocol import Detail, Invoke, Status, Step, StepResult, codec

KILLED_EXIT_CODE = 137  # Systems Manager's code for a command stopped early: 128 + SIGKILL
KILL_TIMEOUT = "timeout"
KILL_CANCEL = "cancel"
WORKER_DIED_MESSAGE = (
    "the worker process ended without finishing (the node rebooted or the worker was killed)"
)
SKIPPED = "Skipped"
INVOKE_PREFIX = b"# corral-invoke "
# Files of a finished invocation a spare directory drops.
_REMOVED_FILES = frozenset({"stdout", "stderr", "kill", "result.json", "result.json.tmp"})
# Files a spare directory keeps, emptied, for their inodes (run.sh is overwritten, the
# wrapper appends to progress).
_KEPT_FILES = ("run.sh", "progress")
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """What identifies a started worker process, even after an agent restart."""

    pid: int
    start_ticks: int
    boot_id: str
    started_at: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an invocation ended, derived from what its worker left on disk."""

    status: str
    status_details: str
    response_code: int | None
    steps: list[StepResult]
    message: str


def boot_id() -> str:
    """This boot's id; "-" when the kernel does not expose one."""
    try:
        return BOOT_ID_PATH.read_text("ascii").strip() or "-"
    except OSError:
        return "-"


def proc_start_ticks(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode("ascii"), int(fields[19])
    except (IndexError, ValueError):
        return None


def is_alive(record: WorkerRecord, current_boot_id: str, inv_dir: Path) -> bool:
    """True while the recorded worker process still runs (pid reuse and reboots guarded).

    A pid is ours if it has the recorded start time or, for workers recorded without one,
    if it still runs this invocation's wrapper script (a reused pid would run something else).
    """
    if record.boot_id != current_boot_id:
        return False
    stat = proc_start_ticks(record.pid)
    if stat is None:
        return False
    state, ticks = stat
    if state in ("Z", "X"):
        return False
    if record.start_ticks >= 0:
        return ticks == record.start_ticks
    try:
        cmdline = Path(f"/proc/{record.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(inv_dir / "run.sh").encode() in cmdline.split(b"\0")


def render_wrapper(inv_dir: Path, steps: list[Step]) -> str:
    """The bash wrapper that runs every step in order, each in a subshell, in one process."""
    d = shlex.quote(str(inv_dir))
    lines = [
        "# generated by corral agent",
        f"D={d}",
        "stop=",
        'mark() { printf \'%s\\n\' "$*${EPOCHREALTIME:+ $EPOCHREALTIME}" >> "$D/progress"; }',
    ]
    for index, step in enumerate(steps):
        lines.append(f"# step {index}")
        lines.append('if [ -z "$stop" ]; then')
        lines.append("  (")
        if step.working_directory:
            wd = shlex.quote(step.working_directory)
            msg = shlex.quote(
                f"corral: working directory {step.working_directory} does not exist "
                "or is not accessible"
            )
            lines.append(f"    cd -- {wd} 2>/dev/null || {{ printf '%s\\n' {msg} >&2; exit 1; }}")
        for name, value in step.env.items():
            lines.append(f"    export {shlex.quote(name)}={shlex.quote(value)} || exit 1")
        lines.append(f"    eval {shlex.quote(step.script)}")
        lines.append("  )")
        lines.append("  rc=$?")
        lines.append(f'  mark step {index} "$rc"')
        if step.on_failure != "continue":
            lines.append('  if [ "$rc" -ne 0 ]; then stop=1; fi')
        lines.append("fi")
    lines.append("mark done")
    return "\n".join(lines) + "\n"


def _write(path: Path, data: bytes, fsync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def prepare(inv_dir: Path, invoke: Invoke, spare: Path | None = None) -> None:
    """Write an invocation's files, in an emptied `spare` directory when there is one.

    The caller then journals the id durably.
    """
    # JSON text is one line (newlines in strings are escaped, non-ASCII too), so the
    # Invoke is a bash comment; bash skips it.
    record = INVOKE_PREFIX + codec.encode(invoke).encode("ascii") + b"\n"
    data = record + render_wrapper(inv_dir, invoke.steps).encode("utf-8")
    # Not fsynced: the journal's fsync is what makes the id durable (fsync of a file in a
    # fresh directory costs ~10x an fsync'd journal append); see docs/agent.md.
    if spare is not None:
        try:
            _write(spare / "run.sh", data)
            os.rename(spare, inv_dir)
            return
        except OSError:
            shutil.rmtree(spare, ignore_errors=True)
    inv_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(inv_dir / "run.sh", data)


def recycle(inv_dir: Path, spare: Path) -> bool:
    """Empty a finished invocation's directory and move it to `spare`; else remove it.

    Nothing of the finished invocation stays readable: `run.sh` and `progress` are
    kept only as empty files, for their inodes.

    Returns True when `spare` now holds an emptied directory ready for `prepare`.
    """
    try:
        names = os.listdir(inv_dir)
        if not _REMOVED_FILES.issuperset(set(names).difference(_KEPT_FILES)):
            raise IsADirectoryError("unexpected files")  # not ours to reuse
        for name in names:
            if name in _KEPT_FILES:
                # Keep the inode, not the finished invocation's scripts, environment
                # or exit codes.
                os.truncate(inv_dir / name, 0)
            else:
                os.unlink(inv_dir / name)
        os.rename(inv_dir, spare)
    except OSError:
        shutil.rmtree(inv_dir, ignore_errors=True)
        return False
    return True


def scrub(inv_dir: Path) -> None:
    """Empty `run.sh` and remove the raw output of an acknowledged invocation at once.

    For invocations with secrets (`Invoke.mask`): `run.sh` holds them (in the Invoke
    record and the rendered steps) and the raw output may too. `recycle` later finds
    the directory as it expects (only `run.sh` and files it removes).
    """
    with contextlib.suppress(OSError):
        os.truncate(inv_dir / "run.sh", 0)
    for name in ("stdout", "stderr"):
        with contextlib.suppress(OSError):
            os.unlink(inv_dir / name)


def read_invoke(inv_dir: Path) -> Invoke:
    """The Invoke stored with an invocation; raises OSError or ProtocolError if damaged."""
    with (inv_dir / "run.sh").open("rb") as fh:
        line = fh.readline()
    if not (line.startswith(INVOKE_PREFIX) and line.endswith(b"\n")):
        raise ProtocolError("run.sh holds no complete invoke record", "bad_message")
    invoke = codec.decode(line[len(INVOKE_PREFIX) : -1], [Invoke], 1 << 30)
    if not isinstance(invoke, Invoke):
        raise ProtocolError("not an invoke record", "bad_message")
    return invoke


def spawn(inv_dir: Path, bash: str, current_boot_id: str) -> WorkerRecord:
    """Start the detached worker; the caller records it in the journal."""
    started_at = time.time()
    append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
    pid = os.posix_spawn(
        bash,
        [bash, "--noprofile", "--norc", str(inv_dir / "run.sh")],
        dict(os.environ),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(inv_dir / "stdout"), append, 0o600),
            (os.POSIX_SPAWN_OPEN, 2, str(inv_dir / "stderr"), append, 0o600),
        ],
        setsid=True,
    )
    # The start time is not read here: /proc/PID/stat of a process that is still mapping
    # its libraries is slow to read, and is_alive() identifies the worker by its script.
    return WorkerRecord(
        pid=pid,
        start_ticks=-1,
        boot_id=current_boot_id or "-",
        started_at=started_at,
    )


@dataclass(frozen=True, slots=True)
class Progress:
    """What the wrapper recorded so far: exit codes and end times of finished steps."""

    exit_codes: dict[int, int]
    ended_at: dict[int, float]
    done: bool
    done_at: float | None


def parse_progress(text: str, mtime: float) -> Progress:
    """Parse a `progress` file; a torn last line is ignored; `mtime` stands in for times."""
    codes: dict[int, int] = {}
    ended: dict[int, float] = {}
    done = False
    done_at: float | None = None
    for line in text.split("\n")[:-1]:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "step":
            try:
                index, code = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            codes[index] = code
            ended[index] = _epoch(parts[3:], mtime)
        elif parts and parts[0] == "done":
            done = True
            done_at = _epoch(parts[1:], mtime)
    return Progress(codes, ended, done, done_at)


def _epoch(rest: list[str], fallback: float) -> float:
    # $EPOCHREALTIME uses the locale's decimal separator; older bash has none at all.
    try:
        return float(rest[0].replace(",", "."))
    except (IndexError, ValueError):
        return fallback


def read_progress(inv_dir: Path) -> Progress:
    """The worker's progress as recorded on disk (empty if it recorded nothing yet)."""
    # Plain descriptor calls: this runs on the event loop for every finished invocation,
    # and a buffered file object costs several more system calls than the read itself.
    try:
        fd = os.open(inv_dir / "progress", os.O_RDONLY)
    except OSError:
        return Progress({}, {}, False, None)
    try:
        mtime = os.fstat(fd).st_mtime
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return Progress({}, {}, False, None)
    finally:
        os.close(fd)
    return parse_progress(b"".join(chunks).decode("utf-8", "replace"), mtime)


def step_started_at(progress: Progress, index: int, record: WorkerRecord) -> float:
    """When step `index` began: the end of the step before it, or the worker's start."""
    if index == 0:
        return record.started_at
    return progress.ended_at.get(index - 1, record.started_at)


def write_kill_reason(inv_dir: Path, reason: str) -> None:
    """Record why the agent is about to kill the worker (before sending any signal)."""
    _write(inv_dir / "kill", reason.encode("ascii") + b"\n", fsync=True)


def read_kill_reason(inv_dir: Path) -> tuple[str, float] | None:
    """(reason, when) the agent decided to kill this worker, if it did."""
    try:
        path = inv_dir / "kill"
        return path.read_text("ascii").strip(), path.stat().st_mtime
    except (OSError, UnicodeDecodeError):
        return None


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the worker's whole process group; a vanished group is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def decide_outcome(
    steps: list[Step], exit_codes: list[int | None], done: bool, kill_reason: str | None
) -> Outcome:
    """Status, details, response code and step results from what the worker left."""
    ending: tuple[Status, Detail, int | None] | None
    if done:
        ending = None
    elif kill_reason == KILL_TIMEOUT:
        ending = (Status.TIMED_OUT, Detail.EXECUTION_TIMED_OUT, KILLED_EXIT_CODE)
    elif kill_reason == KILL_CANCEL:
        ending = (Status.CANCELLED, Detail.CANCELLED, KILLED_EXIT_CODE)
    else:
        ending = (Status.FAILED, Detail.FAILED, None)
    results: list[StepResult] = []
    interrupted = False
    for step, code in zip(steps, exit_codes, strict=True):
        if code is not None:
            status = Status.SUCCESS if code == 0 else Status.FAILED
            results.append(StepResult(name=step.name, status=str(status), response_code=code))
        elif ending is not None and not interrupted:
            interrupted = True
            results.append(StepResult(step.name, str(ending[0]), ending[2]))
        else:
            results.append(StepResult(name=step.name, status=SKIPPED, response_code=None))
    if ending is not None:
        messages = {
            Status.TIMED_OUT: "execution timed out; the worker's process group was killed",
            Status.CANCELLED: "cancelled; the worker's process group was killed",
            Status.FAILED: WORKER_DIED_MESSAGE,
        }
        return Outcome(str(ending[0]), str(ending[1]), ending[2], results, messages[ending[0]])
    failed = [(s.name, c) for s, c in zip(steps, exit_codes, strict=True) if c not in (None, 0)]
    if failed:
        name, code = failed[-1]
        message = f"step {name!r} exited with code {code}"
        return Outcome(str(Status.FAILED), str(Detail.FAILED), code, results, message)
    return Outcome(str(Status.SUCCESS), str(Detail.SUCCESS), 0, results, "")


def write_result(inv_dir: Path, data: bytes) -> None:
    """Store the encoded Result until the server acknowledges it (not fsynced: see top)."""
    tmp = inv_dir / "result.json.tmp"
    _write(tmp, data)
    os.replace(tmp, inv_dir / "result.json")
