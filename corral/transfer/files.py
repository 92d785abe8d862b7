"""Files and trees at either end of a transfer: walking a source, writing a destination.

Everything here blocks; the drivers in `corral.transfer.peer` call it through their
one helper. The same code runs in the agent (the node's files) and in the CLI (the
operator's files).

Rules:

* **No link is followed below a root.** Directories are opened one name at a time
  with O_NOFOLLOW, each relative to its parent's descriptor, starting from `/`. A
  link planted in a tree (`sub -> /etc`) makes the open fail (ELOOP: code
  `symlink`) instead of leading elsewhere, and a link swapped into the root's path
  after it was resolved is refused the same way. Links in a source tree are skipped
  and reported, like devices, sockets and names with control characters.
* **The root is resolved once**, by `resolve_source` or `resolve_destination`
  (`os.path.realpath`), so that whoever decides (the server, against policy) sees
  the real path.
* **Destinations** (what `corral cp` promises, see docs/sessions.md): a file copied
  to an existing directory lands in it under the source's name; otherwise the path
  names the copy, and its parent must exist (no directories are created above the
  root). A directory copy *is* the destination path: created, or merged into when
  it exists, so re-running a copy resumes it.
* **Partial files.** A file is written to `.NAME.corral-partial` next to its
  destination, mode 0600, with `.NAME.corral-partial.json` recording the source's
  size and modification time. Only when the whole file's SHA-256 matched the
  sender's is it synced, given its mode and time and renamed over NAME (an existing
  link there is replaced, not followed). A broken transfer leaves the partial for
  the next attempt, which offers its length and hash (`Destination.offer`); a
  partial of another source version is discarded. A completed file whose size and
  time match the source is offered whole, so a re-run sends nothing it need not.
  A writer holds an exclusive lock (flock) on its partial file: a second transfer to
  the same file at the same time (an old attempt still draining, say) fails `busy`
  (retryable) instead of interleaving its bytes.
* **Modes and owners.** Permission bits only (0o777): set-id and sticky bits are
  never copied. Files belong to whoever runs the receiver (the agent's account on
  upload, the operator's on download).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corral.errors import ProtocolError
from corral.protocol.transfer import (
    BUSY,
    DIRECTORY,
    FILE,
    INVALID,
    IO_ERROR,
    MAX_MODE,
    MAX_NAME_BYTES,
    NOT_FOUND,
    SOURCE_CHANGED,
    SYMLINK,
    TransferEntry,
    TransferError,
    relative_parts,
)

if TYPE_CHECKING:
    from hashlib import _Hash

PARTIAL_SUFFIX = ".corral-partial"
STATE_SUFFIX = ".json"
HASH_BLOCK = 1024 * 1024
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def os_error(error: OSError, path: str) -> TransferError:
    """A TransferError for an operating-system error on `path` (safe to show)."""
    number = error.errno or 0
    reason = os.strerror(number) if number else "failed"
    if number == errno.ENOENT:
        return TransferError(NOT_FOUND, f"{path}: {reason}")
    if number == errno.ELOOP:
        return TransferError(SYMLINK, f"{path}: refusing to follow a symbolic link")
    if number in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY):
        return TransferError(INVALID, f"{path}: {reason}")
    return TransferError(IO_ERROR, f"{path}: {reason}")


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode) & MAX_MODE


def open_directory(path: str) -> int:
    """A descriptor of absolute directory `path`, opened name by name without following links."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in (n for n in path.split("/") if n):
            child = os.open(name, _DIRECTORY_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _descend(fd: int, names: tuple[str, ...]) -> int:
    """Open `names` below directory `fd` (which is closed), without following links."""
    try:
        for name in names:
            child = os.open(name, _DIRECTORY_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _split_root(root: str, what: str) -> tuple[str, str]:
    parent, name = os.path.split(root)
    if not name:
        raise TransferError(INVALID, f"refusing to copy {what} /: name a directory below it")
    return parent, name


def _display(root: str, parts: tuple[str, ...]) -> str:
    return os.path.join(root, *parts) if parts else root


# --- sources ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceEntry:
    """One file or directory to send; `path` is relative to the root ("" is the root)."""

    path: str
    kind: str
    mode: int
    mtime_ns: int
    size: int


@dataclass(slots=True)
class SourceTree:
    """What a sender will send, in order (parents before children)."""

    root: str
    kind: str
    entries: list[SourceEntry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # relative paths not sent


def resolve_source(path: str, recursive: bool) -> tuple[str, str]:
    """(resolved absolute root, kind) of what `path` names; TransferError when unsuitable."""
    root = os.path.realpath(path)
    try:
        st = os.stat(root)
    except OSError as error:
        raise os_error(error, path) from None
    if stat.S_ISDIR(st.st_mode):
        if not recursive:
            raise TransferError(INVALID, f"{path} is a directory (copy it with --recursive)")
        _split_root(root, "the directory")
        return root, DIRECTORY
    if stat.S_ISREG(st.st_mode):
        return root, FILE
    raise TransferError(INVALID, f"{path} is not a regular file or a directory")


def scan_source(root: str, kind: str) -> SourceTree:
    """Every entry below the resolved `root` (see `resolve_source`), links not followed."""
    parent, name = _split_root(root, "the directory")
    tree = SourceTree(root, kind)
    try:
        fd = open_directory(parent)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if kind == FILE and stat.S_ISREG(st.st_mode):
                tree.entries.append(SourceEntry("", FILE, _mode(st), st.st_mtime_ns, st.st_size))
                return tree
            if kind != DIRECTORY or not stat.S_ISDIR(st.st_mode):
                raise TransferError(SOURCE_CHANGED, f"{root} changed while it was being read")
            tree.entries.append(SourceEntry("", DIRECTORY, _mode(st), st.st_mtime_ns, 0))
            _walk(os.open(name, _DIRECTORY_FLAGS, dir_fd=fd), "", tree)
        finally:
            os.close(fd)
    except OSError as error:
        raise os_error(error, root) from None
    return tree


def _walk(fd: int, prefix: str, tree: SourceTree) -> None:
    """Add the entries of directory `fd` (closed at the end) in name order, depth first."""
    try:
        with os.scandir(fd) as found:
            children = sorted((e.name, e.stat(follow_symlinks=False)) for e in found)
        for name, st in children:
            path = f"{prefix}/{name}" if prefix else name
            try:
                relative_parts(path)
            except ProtocolError:
                tree.skipped.append(path)
                continue
            if stat.S_ISDIR(st.st_mode):
                tree.entries.append(SourceEntry(path, DIRECTORY, _mode(st), st.st_mtime_ns, 0))
                _walk(os.open(name, _DIRECTORY_FLAGS, dir_fd=fd), path, tree)
            elif stat.S_ISREG(st.st_mode):
                tree.entries.append(SourceEntry(path, FILE, _mode(st), st.st_mtime_ns, st.st_size))
            else:
                tree.skipped.append(path)
    finally:
        os.close(fd)


def open_source_file(root: str, entry: TransferEntry) -> int:
    """A read descriptor of `entry` below `root`, which must still be that large a file."""
    parent, name = _split_root(root, "the directory")
    parts = (name, *relative_parts(entry.path))
    shown = _display(root, parts[1:])
    try:
        fd = _descend(open_directory(parent), parts[:-1])
        try:
            file_fd = os.open(parts[-1], _READ_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        st = os.fstat(file_fd)
    except OSError as error:
        raise os_error(error, shown) from None
    if not stat.S_ISREG(st.st_mode) or st.st_size < entry.size:
        os.close(file_fd)
        raise TransferError(SOURCE_CHANGED, f"{shown} changed while it was being sent")
    return file_fd


def hash_prefix(fd: int, length: int) -> _Hash | None:
    """The SHA-256 of the first `length` bytes of `fd`; None when it is shorter."""
    digest = hashlib.sha256()
    position = 0
    while position < length:
        block = os.pread(fd, min(HASH_BLOCK, length - position), position)
        if not block:
            return None
        digest.update(block)
        position += len(block)
    return digest


def read_block(fd: int, offset: int, length: int, digest: _Hash) -> bytes:
    """Up to `length` bytes at `offset`, added to `digest` (b"" at the end of the file)."""
    block = os.pread(fd, length, offset)
    digest.update(block)
    return block


# --- destinations ---------------------------------------------------------------


def resolve_destination(path: str, source_name: str, kind: str) -> str:
    """The resolved root to write a `kind` copy of `source_name` to, for `path`.

    A file copied to an existing directory goes into it, under `source_name`;
    otherwise `path` names the copy and its parent directory must exist.
    """
    path = os.path.abspath(path)
    resolved = os.path.realpath(path)
    if os.path.isdir(resolved):
        if kind == DIRECTORY:
            _split_root(resolved, "to the directory")
            return resolved
        if not source_name or "/" in source_name or source_name in (".", ".."):
            raise TransferError(INVALID, f"{path} is a directory")
        target = os.path.join(resolved, source_name)
    else:
        parent = os.path.realpath(os.path.dirname(path))
        if not os.path.isdir(parent):
            raise TransferError(
                NOT_FOUND, f"the directory {os.path.dirname(path)} does not exist (create it first)"
            )
        target = os.path.join(parent, os.path.basename(path))
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as error:
        raise os_error(error, target) from None
    if kind == FILE and stat.S_ISDIR(st.st_mode):
        raise TransferError(INVALID, f"{target} is a directory")
    if kind == DIRECTORY and not stat.S_ISDIR(st.st_mode):
        raise TransferError(INVALID, f"{target} exists and is not a directory")
    return target


def partial_names(name: str) -> tuple[str, str]:
    """The names of the partial file of `name` and of its state file."""
    partial = f".{name}{PARTIAL_SUFFIX}"
    if len((partial + STATE_SUFFIX).encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        partial = f".corral-{digest}{PARTIAL_SUFFIX}"
    return partial, partial + STATE_SUFFIX


@dataclass(slots=True)
class Offer:
    """What a receiver already holds of a file: its first `offset` bytes and their hash."""

    offset: int = 0
    digest: _Hash | None = None
    complete: bool = False  # the destination itself, not a partial file

    @property
    def sha256(self) -> str:
        """The hash to put in RESUME ("" when nothing is held)."""
        return self.digest.hexdigest() if self.digest is not None and self.offset else ""


def _state(size: int, mtime_ns: int) -> bytes:
    return json.dumps({"size": size, "mtime_ns": mtime_ns}).encode()


class PartialFile:
    """A file being received: appended to, hashed as written, then put in place."""

    def __init__(
        self,
        dir_fd: int,
        name: str,
        fd: int,
        digest: _Hash,
        position: int,
        complete: bool,
        shown: str,
    ) -> None:
        self._dir_fd = dir_fd
        self._name = name
        self._partial, self._state = partial_names(name)
        self._fd: int | None = fd
        self._digest = digest
        self.position = position
        self._complete = complete
        self.shown = shown

    @property
    def sha256(self) -> str:
        """The SHA-256 of every byte of the file so far (its kept prefix included)."""
        return self._digest.hexdigest()

    def write(self, data: bytes) -> None:
        """Append `data` and add it to the hash."""
        assert self._fd is not None
        assert not self._complete
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as error:
            raise os_error(error, self.shown) from None
        self._digest.update(data)
        self.position += len(data)

    def finish(self, mode: int, mtime_ns: int) -> None:
        """Sync, set mode and time, and rename over the destination (the hash was checked)."""
        assert self._fd is not None
        try:
            if not self._complete:
                os.fsync(self._fd)
            os.fchmod(self._fd, mode & MAX_MODE)
            os.utime(self._fd, ns=(mtime_ns, mtime_ns))
            os.close(self._fd)
            self._fd = None
            if not self._complete:
                os.replace(
                    self._partial, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd
                )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._state, dir_fd=self._dir_fd)
                os.fsync(self._dir_fd)
        except OSError as error:
            raise os_error(error, self.shown) from None
        finally:
            self.close()

    def discard(self) -> None:
        """Remove the partial file and its state (what was written cannot be trusted)."""
        self._close_file()
        if not self._complete:
            for name in (self._partial, self._state):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._dir_fd)
        self.close()

    def close(self) -> None:
        """Release the descriptors; a partial file not finished stays for the next attempt."""
        self._close_file()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Destination:
    """Writes one transfer's entries below a resolved root (see `resolve_destination`)."""

    def __init__(self, root: str) -> None:
        self.root = root
        parent, self._name = _split_root(root, "to the directory")
        try:
            self._parent_fd = open_directory(parent)
        except OSError as error:
            raise os_error(error, parent) from None
        self._directories: list[tuple[tuple[str, ...], int, int]] = []

    def close(self) -> None:
        """Release the root's descriptor."""
        if self._parent_fd >= 0:
            os.close(self._parent_fd)
            self._parent_fd = -1

    def _parent(self, parts: tuple[str, ...]) -> tuple[int, str]:
        """(descriptor of the directory holding entry `parts`, the entry's name)."""
        names = (self._name, *parts)
        return _descend(os.dup(self._parent_fd), names[:-1]), names[-1]

    def make_directory(self, parts: tuple[str, ...], mode: int, mtime_ns: int) -> None:
        """Create the directory (or keep an existing one); its mode and time come at the end."""
        shown = _display(self.root, parts)
        try:
            fd, name = self._parent(parts)
            try:
                os.mkdir(name, 0o700, dir_fd=fd)
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise TransferError(
                        SYMLINK, f"{shown}: refusing to follow a symbolic link"
                    ) from None
                if not stat.S_ISDIR(st.st_mode):
                    raise TransferError(INVALID, f"{shown} exists and is not a directory") from None
            finally:
                os.close(fd)
        except OSError as error:
            raise os_error(error, shown) from None
        self._directories.append((parts, mode, mtime_ns))

    def finish_directories(self) -> None:
        """Give every directory its mode and time, each after everything below it."""
        for parts, mode, mtime_ns in reversed(self._directories):
            shown = _display(self.root, parts)
            try:
                fd, name = self._parent(parts)
                fd = _descend(fd, (name,))
                try:
                    os.fchmod(fd, mode & MAX_MODE)
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
                finally:
                    os.close(fd)
            except OSError as error:
                raise os_error(error, shown) from None

    def offer(self, parts: tuple[str, ...], entry: TransferEntry) -> Offer:
        """What is already here of this file: a partial of the same source, or the file itself."""
        shown = _display(self.root, parts)
        try:
            fd, name = self._parent(parts)
        except OSError as error:
            raise os_error(error, shown) from None
        try:
            return self._offer(fd, name, entry)
        except OSError as error:
            raise os_error(error, shown) from None
        finally:
            os.close(fd)

    @staticmethod
    def _offer(fd: int, name: str, entry: TransferEntry) -> Offer:
        partial, state = partial_names(name)
        recorded = _read_small(fd, state)
        try:
            st = os.stat(partial, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            usable = (
                stat.S_ISREG(st.st_mode)
                and recorded == _state(entry.size, entry.mtime_ns)
                and 0 < st.st_size <= entry.size
            )
            if usable:
                digest = _hash_file(fd, partial, st.st_size)
                if digest is not None:
                    return Offer(st.st_size, digest)
            for stale in (partial, state):  # another source's, or unusable: start afresh
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale, dir_fd=fd)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return Offer()
        if (
            stat.S_ISREG(st.st_mode)
            and st.st_size == entry.size > 0
            and st.st_mtime_ns == entry.mtime_ns
        ):
            digest = _hash_file(fd, name, st.st_size)
            if digest is not None:
                return Offer(st.st_size, digest, complete=True)
        return Offer()

    def open_file(
        self, parts: tuple[str, ...], entry: TransferEntry, begin: int, offer: Offer
    ) -> PartialFile:
        """Where this file's DATA from byte `begin` goes (the offer kept, or a fresh partial)."""
        shown = _display(self.root, parts)
        try:
            fd, name = self._parent(parts)
        except OSError as error:
            raise os_error(error, shown) from None
        partial, state = partial_names(name)
        try:
            if begin and begin == offer.offset and offer.digest is not None and offer.complete:
                file_fd = os.open(name, _READ_FLAGS, dir_fd=fd)
                return PartialFile(fd, name, file_fd, offer.digest, begin, True, shown)
            resuming = bool(begin) and begin == offer.offset and offer.digest is not None
            flags = _WRITE_FLAGS if resuming else _WRITE_FLAGS | os.O_CREAT
            file_fd = os.open(partial, flags, 0o600, dir_fd=fd)
            try:
                _lock(fd, partial, file_fd, shown)
                os.ftruncate(file_fd, begin if resuming else 0)
                os.lseek(file_fd, begin if resuming else 0, os.SEEK_SET)
                if not resuming:
                    _write_small(fd, state, _state(entry.size, entry.mtime_ns))
            except BaseException:
                os.close(file_fd)
                raise
            digest = offer.digest if resuming and offer.digest is not None else hashlib.sha256()
            return PartialFile(fd, name, file_fd, digest, begin if resuming else 0, False, shown)
        except BaseException as error:
            os.close(fd)
            if isinstance(error, OSError):
                raise os_error(error, shown) from None
            raise


def _lock(dir_fd: int, name: str, fd: int, shown: str) -> None:
    """Hold `fd` (the partial file `name`) exclusively, or fail `busy`."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TransferError(BUSY, f"{shown}: another transfer is writing it") from None
    # Locked, but still the partial file? (the other writer may have renamed it away)
    if os.fstat(fd).st_ino != os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino:
        raise TransferError(BUSY, f"{shown}: another transfer was writing it")


def _hash_file(dir_fd: int, name: str, length: int) -> _Hash | None:
    file_fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        return hash_prefix(file_fd, length)
    finally:
        os.close(file_fd)


def _read_small(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _write_small(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, _WRITE_FLAGS | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
