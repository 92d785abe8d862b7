"""An interactive shell on a real pseudo-terminal, exposed as byte streams for a transport.

Design and rules:
* Spawning: the pty is opened and the shell started in one thread job (`offload`):
  `subprocess.Popen` with the pty's slave end as stdin, stdout and stderr,
  `start_new_session=True` (setsid) and a small `preexec_fn` that resets the signal
  dispositions and mask the agent may have (an ignored SIGINT would otherwise make
  Ctrl-C useless), makes the slave the controlling terminal (TIOCSCTTY) and changes
  to the working directory. That preexec is the only Python run between fork and exec
  in this multi-threaded process, and it only calls C functions that take no locks.
  The window size is set on the slave before the shell starts; the agent then closes
  its copy of the slave, so the master reads EOF (EIO) once every process of the
  session has let go of the terminal.
* Users: `user=None` runs the shell as the agent's own account. Another account is
  switched to by Popen itself (uid, gid, supplementary groups from the group database)
  before the preexec runs, so the working directory is entered with the user's own
  permissions; the terminal is given to the user (owner, group tty, mode 0620) as
  login(1) does. Only root can switch: otherwise AccessDeniedError names the user.
  `default_session_user` picks the account when the caller configured none.
* Environment: built fresh, never inherited from the agent (it may hold settings
  and tokens): HOME, USER, LOGNAME and SHELL from the passwd database, a standard
  PATH, TERM=xterm-256color, the agent's locale and TZ; the caller's `env` last.
* Shell: the account's login shell (or `shell=`), started as a login shell
  (argv[0] "-bash"); with `command`, `SHELL -c COMMAND` like `ssh host COMMAND`.
* Profile commands are written to a temporary file (0600, owned by the session's
  user) that the shell sources at start and removes first thing, so they are never
  echoed, typed, recorded or visible in `ps`: bash gets it as `--rcfile` (after the
  login files: /etc/profile, then ~/.bash_profile, ~/.bash_login or ~/.profile), a
  POSIX sh (dash, ksh, ...) as `$ENV` of its login shell, and with `command` it is
  sourced (`.`) before the command. Other shells (zsh, fish, csh) are refused when a
  profile is given. If the shell did not remove the file, `terminate` does.
* Flow control: `read` reads the master only when the consumer asks, through the
  loop's reader (non-blocking fd). A producer faster than the consumer fills the
  kernel's pty buffer (tens of KiB) and then blocks in write(2); nothing in the
  agent grows. `write` waits for writability, so a shell that does not read its
  input slows the writer down the same way.
* Keys are bytes like any terminal's: Ctrl-C (0x03) and Ctrl-D (0x04) are turned
  into SIGINT and end-of-file by the pty's line discipline, not by the agent.
* Resize: TIOCSWINSZ on the master; the kernel sends SIGWINCH to the terminal's
  foreground process group when the size changes.
* End of the shell: `wait()` gives its exit code, or 128+N when signal N killed it.
  After the shell's exit, `read` still hands out what the shell wrote before it
  died, then returns b"" at EOF (EIO), or once nothing arrived for
  EXIT_DRAIN_SECONDS or POST_EXIT_BYTES were read (a background job that keeps the
  terminal open cannot keep the session alive).
* `terminate(grace)`: SIGHUP then SIGCONT to every process group of the session (all
  processes whose session id is the shell's pid, found in /proc: jobs in their own
  process groups too; the kernel guarantees that id is not reused while any of them
  lives), as a closed terminal would; SIGKILL to those still alive after `grace`
  seconds; then the fds are closed and waiters see EOF. Idempotent and concurrent
  calls share the one hang-up. A process that detached itself (setsid, a daemon)
  survives, as it would a closed terminal.
* Limits: `SessionClock` is the pure rule (input written or output read is
  activity; the maximum duration counts from the start); a watchdog task owned by
  the session applies it and hangs up with `ended_reason` set.
* The shell is the agent's child: it is reaped as soon as its pidfd (or, without
  pidfd, a poll) says it exited. Its own children are reparented to init as usual.
  The owner calls `terminate` once the session is over, even after the shell
  exited: that hangs up left-over jobs and releases the descriptors.

Known limits: no PAM session (no pam_limits, pam_env, logind session, utmp/lastlog
entry); an agent running as PID 1 must reap the orphans itself; `os.openpty` marks
its fds close-on-exec just after opening them, so a process spawned by another
thread without closing fds (posix_spawn) in that instant could inherit them: the
session still ends (post-exit drain, SIGKILL by session id), only later.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import grp
import logging
import os
import pwd
import shlex
import signal
import struct
import subprocess
import tempfile
import termios
from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.agent.runner import offload
from corral.errors import (
    AccessDeniedError,
    ConflictError,
    CorralError,
    NotFoundError,
    UnavailableError,
    ValidationError,
)

logger = logging.getLogger(__name__)

SESSION_ACCOUNT = "corral-session"
DEFAULT_TERM = "xterm-256color"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_IDLE_TIMEOUT = 20 * 60.0
MAX_IDLE_TIMEOUT = 60 * 60.0
MAX_DURATION_LIMIT = 24 * 3600.0
DEFAULT_KILL_GRACE = 5.0
READ_CHUNK = 65536
# After the shell's exit: how long a quiet terminal is drained, and how much is read at most.
EXIT_DRAIN_SECONDS = 0.2
POST_EXIT_BYTES = 1 << 20
# How often a hang-up checks whether the session's other processes are gone.
_HANGUP_POLL = 0.02
# How long SIGKILLed processes may take to be gone before the hang-up gives up on them.
_KILL_WAIT = 5.0
_ENDED = "the session has ended"
_BASH = frozenset({"bash"})
_POSIX_SH = frozenset({"sh", "dash", "ash", "ksh", "ksh93", "mksh", "pdksh", "posh", "yash"})
_LOCALE_VARS = frozenset({"LANG", "LANGUAGE", "TZ"})
# Dispositions the agent may have set to "ignore", which exec(2) would keep.
_RESET_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGPIPE,
    signal.SIGTSTP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
    signal.SIGWINCH,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)


# --- accounts ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionAccount:
    """The account a session runs as, from the passwd database."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str
    # True when the agent must switch to this account (it is not the agent's own).
    switch: bool


def resolve_session_user(user: str | None, euid: int | None = None) -> SessionAccount:
    """The account for `user` (None: the agent's own); `euid` stands for the agent's.

    Raises ValidationError for an unknown user, AccessDeniedError when the agent is not
    root and `user` is another account.
    """
    own = os.geteuid() if euid is None else euid
    if user is None:
        try:
            entry = pwd.getpwuid(own)
        except KeyError:
            # An account without a passwd entry (a container's arbitrary uid).
            name = os.environ.get("USER") or str(own)
            home = os.environ.get("HOME") or "/"
            return SessionAccount(name, own, os.getegid(), (), home, "/bin/sh", False)
        return _account(entry, switch=False)
    try:
        entry = pwd.getpwnam(user)
    except (KeyError, ValueError) as exc:
        raise ValidationError(f"unknown user {user!r} on this node", field="user") from exc
    if entry.pw_uid == own:
        return _account(entry, switch=False)
    if own != 0:
        raise AccessDeniedError(
            f"cannot start a session as user {user!r}: the agent runs as {_user_name(own)!r}, "
            "and only an agent running as root can switch users"
        )
    return _account(entry, switch=True)


def default_session_user(configured: str | None, euid: int | None = None) -> str:
    """The account sessions run as when the caller asks for none.

    The configured account, else SESSION_ACCOUNT when the agent runs as root (it is
    never created here), else the agent's own user.
    """
    if configured:
        return configured
    own = os.geteuid() if euid is None else euid
    if own == 0:
        try:
            pwd.getpwnam(SESSION_ACCOUNT)
        except KeyError:
            raise NotFoundError(
                f"the agent runs as root, so sessions run as the unprivileged account "
                f"{SESSION_ACCOUNT!r}, which does not exist on this node: create it (for "
                f"example `useradd --system --create-home --shell /bin/bash "
                f"{SESSION_ACCOUNT}`) or configure the session user"
            ) from None
        return SESSION_ACCOUNT
    try:
        return pwd.getpwuid(own).pw_name
    except KeyError:
        raise NotFoundError(
            f"the agent's uid {own} has no passwd entry; configure the session user"
        ) from None


def _account(entry: pwd.struct_passwd, switch: bool) -> SessionAccount:
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)) if switch else ()
    return SessionAccount(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir or "/",
        shell=entry.pw_shell or "/bin/sh",
        switch=switch,
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --- limits (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """When a session is ended for idleness or age, and how long a hang-up may take."""

    idle_timeout_seconds: float | None = DEFAULT_IDLE_TIMEOUT
    max_duration_seconds: float | None = None
    kill_grace_seconds: float = DEFAULT_KILL_GRACE

    def __post_init__(self) -> None:
        checks = (
            ("idle_timeout_seconds", self.idle_timeout_seconds, MAX_IDLE_TIMEOUT),
            ("max_duration_seconds", self.max_duration_seconds, MAX_DURATION_LIMIT),
        )
        for name, value, ceiling in checks:
            if value is not None and not 0 < value <= ceiling:
                raise ValidationError(
                    f"{name} must be more than 0 and at most {ceiling:g} seconds", field=name
                )
        if not self.kill_grace_seconds >= 0:
            raise ValidationError(
                "kill_grace_seconds must not be negative", field="kill_grace_seconds"
            )


@dataclass(slots=True)
class SessionClock:
    """Decides when a session ends for idleness or age; pure: each call is given the time."""

    limits: SessionLimits
    started_at: float
    last_activity: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_activity = self.started_at

    def touch(self, now: float) -> None:
        """Input or output happened at `now`."""
        self.last_activity = max(self.last_activity, now)

    def expired(self, now: float) -> str | None:
        """Why the session must end at `now`, or None while it may go on."""
        limit = self.limits.max_duration_seconds
        if limit is not None and now - self.started_at >= limit:
            return "maximum duration reached"
        idle = self.limits.idle_timeout_seconds
        if idle is not None and now - self.last_activity >= idle:
            return f"idle timeout ({_span(idle)} without input or output)"
        return None

    def next_check(self, now: float) -> float | None:
        """Seconds until a limit may expire (0 if one has), None when there are no limits."""
        deadlines = []
        if self.limits.max_duration_seconds is not None:
            deadlines.append(self.started_at + self.limits.max_duration_seconds)
        if self.limits.idle_timeout_seconds is not None:
            deadlines.append(self.last_activity + self.limits.idle_timeout_seconds)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


# --- launching --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    """What `PtySession.start` was asked for, checked for what needs no system lookups."""

    command: str | None
    user: str | None
    cols: int
    rows: int
    env: Mapping[str, str] | None
    profile: str | None
    cwd: str | None
    shell: str | None


@dataclass(frozen=True, slots=True)
class _Launch:
    """Everything the spawn needs, resolved against this node."""

    account: SessionAccount
    shell: str
    command: str | None
    profile: str | None
    env: dict[str, str]
    cwd: str | None
    cols: int
    rows: int


@dataclass(frozen=True, slots=True)
class _Started:
    popen: subprocess.Popen[bytes]
    master: int
    profile_path: str | None
    account: SessionAccount


def _check_size(cols: int, rows: int) -> None:
    for name, value in (("cols", cols), ("rows", rows)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 0xFFFF:
            raise ValidationError(f"{name} must be an integer from 1 to 65535", field=name)


def _check_text(value: str, name: str) -> None:
    if "\0" in value:
        raise ValidationError(f"{name} must not contain NUL characters", field=name)


def _profile_kind(shell: str) -> str:
    base = os.path.basename(shell)
    if base in _BASH:
        return "bash"
    if base in _POSIX_SH:
        return "posix"
    raise ValidationError(
        f"profile commands need bash or a POSIX sh, and the session's shell is {shell!r}",
        field="profile",
    )


def _session_env(
    account: SessionAccount, shell: str, env: Mapping[str, str] | None
) -> dict[str, str]:
    result = {k: v for k, v in os.environ.items() if k in _LOCALE_VARS or k.startswith("LC_")}
    result.update(
        HOME=account.home,
        USER=account.name,
        LOGNAME=account.name,
        SHELL=shell,
        PATH=DEFAULT_PATH,
        TERM=DEFAULT_TERM,
    )
    for key, value in (env or {}).items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValidationError(f"invalid environment variable {key!r}", field="env")
        result[key] = value
    return result


def _profile_script(kind: str, path: str, profile: str, interactive: bool) -> str:
    """The temporary file's text: remove itself, (bash) the login files, the profile."""
    lines = [f"rm -f -- {shlex.quote(path)}"]
    if interactive and kind == "bash":
        # --rcfile replaces the login files of a login shell: source them as login does.
        lines += [
            "if [ -r /etc/profile ]; then . /etc/profile; fi",
            "if [ -r ~/.bash_profile ]; then . ~/.bash_profile",
            "elif [ -r ~/.bash_login ]; then . ~/.bash_login",
            "elif [ -r ~/.profile ]; then . ~/.profile",
            "fi",
        ]
    elif interactive:
        lines.append("unset ENV")
    lines.append(profile)
    return "\n".join(lines) + "\n"


def _shell_argv(
    shell: str, command: str | None, profile_path: str | None
) -> tuple[list[str], dict[str, str]]:
    """argv (argv[0] included) and extra environment for the shell."""
    base = os.path.basename(shell)
    if command is not None:
        if profile_path is not None:
            command = f". {shlex.quote(profile_path)}\n{command}"
        return [base, "-c", command], {}
    if profile_path is None:
        return ["-" + base], {}  # a login shell, as login(1) and sshd start it
    if _profile_kind(shell) == "bash":
        return [base, "--rcfile", profile_path, "-i"], {}
    return ["-" + base], {"ENV": profile_path}


def _child_setup(cwd: str, strict: bool) -> None:
    """Run in the child between fork and exec, after the user switch (C calls only)."""
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    try:
        os.chdir(cwd)
    except OSError:
        if strict:
            raise
        os.chdir("/")  # like login(1) when the home directory is missing


def _winsize(cols: int, rows: int) -> bytes:
    return struct.pack("HHHH", rows, cols, 0, 0)


def _write_profile(launch: _Launch) -> str:
    assert launch.profile is not None
    fd, path = tempfile.mkstemp(prefix="corral-profile-")
    try:
        text = _profile_script(
            _profile_kind(launch.shell), path, launch.profile, launch.command is None
        )
        if launch.account.switch:
            os.fchown(fd, launch.account.uid, launch.account.gid)
        os.write(fd, text.encode("utf-8", "surrogateescape"))
    except BaseException:
        os.close(fd)
        _remove(path)
        raise
    os.close(fd)
    return path


def _give_terminal(slave: int, account: SessionAccount) -> None:
    try:
        tty_gid = grp.getgrnam("tty").gr_gid
    except KeyError:
        tty_gid = account.gid
    os.fchown(slave, account.uid, tty_gid)
    os.fchmod(slave, 0o620)


def _resolve(request: _Request) -> _Launch:
    """The account, shell and environment for a request (passwd lookups may block)."""
    if request.cwd is not None and not (os.path.isabs(request.cwd) and os.path.isdir(request.cwd)):
        raise ValidationError(f"no such directory on this node: {request.cwd!r}", field="cwd")
    account = resolve_session_user(request.user)
    shell = request.shell or account.shell
    if request.profile is not None:
        _profile_kind(shell)
    return _Launch(
        account=account,
        shell=shell,
        command=request.command,
        profile=request.profile,
        env=_session_env(account, shell, request.env),
        cwd=request.cwd,
        cols=request.cols,
        rows=request.rows,
    )


def _spawn(request: _Request) -> _Started:
    """Open a pty and start the shell on it (blocking: runs in a thread)."""
    launch = _resolve(request)
    try:
        master, slave = os.openpty()
    except OSError as exc:
        raise UnavailableError(f"cannot open a pseudo-terminal: {exc.strerror}") from exc
    profile_path = None
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, _winsize(launch.cols, launch.rows))
        if launch.account.switch:
            _give_terminal(slave, launch.account)
        if launch.profile is not None:
            profile_path = _write_profile(launch)
        argv, extra_env = _shell_argv(launch.shell, launch.command, profile_path)
        popen = _popen(launch, argv, {**launch.env, **extra_env}, slave)
    except BaseException:
        os.close(master)
        if profile_path is not None:
            _remove(profile_path)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return _Started(popen, master, profile_path, launch.account)


def _popen(
    launch: _Launch, argv: list[str], env: dict[str, str], slave: int
) -> subprocess.Popen[bytes]:
    """Start the shell; OS errors become Corral errors here and only here."""
    account = launch.account
    switch = account.switch
    strict = launch.cwd is not None
    cwd = launch.cwd if launch.cwd is not None else account.home
    try:
        return subprocess.Popen(  # noqa: S603 - argv is built here, no shell=True
            argv,
            executable=launch.shell,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=functools.partial(_child_setup, cwd, strict),
            close_fds=True,
            user=account.uid if switch else None,
            group=account.gid if switch else None,
            extra_groups=list(account.groups) if switch else None,
        )
    except subprocess.SubprocessError as exc:
        if strict:
            raise ValidationError(
                f"user {account.name!r} cannot enter the directory {launch.cwd!r}", field="cwd"
            ) from exc
        raise UnavailableError("cannot prepare the session's shell") from exc
    except OSError as exc:
        message = f"cannot run the shell {launch.shell!r} for user {account.name!r}: {exc.strerror}"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise NotFoundError(message) from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise AccessDeniedError(message) from exc
        raise UnavailableError(message) from exc


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --- the session's processes ----------------------------------------------------------


def session_groups(sid: int) -> set[int]:
    """Process groups of the live (not zombie) processes in session `sid`, from /proc."""
    groups: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # gone meanwhile
        # Fields after the command's closing parenthesis: state ppid pgrp session ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
            groups.add(int(fields[2]))
    return groups


def _signal_groups(groups: set[int], sig: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


# --- the session ------------------------------------------------------------------------


class PtySession:
    """A shell on a pseudo-terminal: read its output, write its input, resize, hang up."""

    def __init__(self, started: _Started, limits: SessionLimits) -> None:
        """Use `PtySession.start`."""
        self._loop = asyncio.get_running_loop()
        self._popen = started.popen
        self._master: int | None = started.master
        self._profile_path = started.profile_path
        self._account = started.account
        self._limits = limits
        self._clock = SessionClock(limits, self._loop.time())
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._waiters: set[asyncio.Future[bool]] = set()
        self._write_lock = asyncio.Lock()
        self._reading = False
        self._eof = False
        self._post_exit_budget = POST_EXIT_BYTES
        self._pidfd: int | None = None
        self._poll_handle: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.ended_reason: str | None = None
        self._watch_exit()
        if limits.idle_timeout_seconds is not None or limits.max_duration_seconds is not None:
            self._watchdog = asyncio.create_task(
                self._enforce_limits(), name=f"corral-pty-limits-{self.pid}"
            )

    @classmethod
    async def start(
        cls,
        command: str | None = None,
        user: str | None = None,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        profile: str | None = None,
        cwd: str | None = None,
        *,
        shell: str | None = None,
        limits: SessionLimits | None = None,
    ) -> PtySession:
        """Start `user`'s login shell (or `command` through it) on a new pty.

        `shell` replaces the account's login shell (agent configuration); `limits`
        defaults to a 20 min idle timeout and no maximum duration.
        """
        _check_size(cols, rows)
        for name, text in (("command", command), ("profile", profile), ("cwd", cwd)):
            if text is not None:
                _check_text(text, name)
        if command == "":
            raise ValidationError("command must not be empty", field="command")
        limits = limits or SessionLimits()
        request = _Request(command, user, cols, rows, env, profile, cwd, shell)
        spawning = asyncio.ensure_future(offload(_spawn, request))
        try:
            started = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The thread cannot be stopped: wait for it (milliseconds), hang up what it started.
            with contextlib.suppress(CorralError, OSError):
                await cls(await spawning, limits).terminate(0)
            raise
        session = cls(started, limits)
        account = started.account
        logger.info(
            "session shell started pid=%d user=%s cols=%d rows=%d",
            session.pid,
            account.name,
            cols,
            rows,
        )
        return session

    # --- facts ------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The shell's pid (also the session id and its process group id)."""
        return self._popen.pid

    @property
    def user(self) -> str:
        """The account the shell runs as."""
        return self._account.name

    @property
    def returncode(self) -> int | None:
        """The shell's exit status once it ended (128+N for signal N), else None."""
        return self._exit.result() if self._exit.done() else None

    def pending_output_bytes(self) -> int:
        """Output waiting in the master's read buffer that nobody has read yet."""
        if self._master is None:
            return 0
        raw = fcntl.ioctl(self._master, termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", raw)[0])

    # --- streams --------------------------------------------------------------------

    async def read(self, max_bytes: int = READ_CHUNK) -> bytes:
        """Up to `max_bytes` of output, waiting for some; b"" at end of file."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._reading:
            raise RuntimeError("another read() is already waiting for this session's output")
        self._reading = True
        try:
            return await self._read(max_bytes)
        finally:
            self._reading = False

    async def _read(self, max_bytes: int) -> bytes:
        while True:
            fd = self._master
            if fd is None or self._eof:
                return b""
            exited = self._exit.done()
            if exited:
                if self._post_exit_budget <= 0:
                    return self._at_eof()
                max_bytes = min(max_bytes, self._post_exit_budget)
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                return self._at_eof()  # every slave end is closed
            else:
                if not data:
                    return self._at_eof()
                if exited:
                    self._post_exit_budget -= len(data)
                self._clock.touch(self._loop.time())
                return data
            woke = await self._wait_io(fd, False, EXIT_DRAIN_SECONDS if exited else None)
            if not woke:
                return self._at_eof()  # the shell is gone and the terminal stays quiet

    def _at_eof(self) -> bytes:
        self._eof = True
        return b""

    async def write(self, data: bytes) -> None:
        """Send all of `data` to the shell as typed input, waiting while the pty is full.

        Raises ConflictError once the session has ended.
        """
        async with self._write_lock:
            view = memoryview(data)
            while view:
                fd = self._master
                if fd is None:
                    raise ConflictError(_ENDED)
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await self._wait_io(fd, True, None)
                    continue
                except OSError as exc:
                    if exc.errno == errno.EIO:
                        raise ConflictError(_ENDED) from exc
                    raise
                view = view[written:]
                self._clock.touch(self._loop.time())

    async def _wait_io(self, fd: int, writable: bool, patience: float | None) -> bool:
        """Wait until `fd` is ready, the shell exits or the session closes; False on timeout."""
        waiter: asyncio.Future[bool] = self._loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(True)

        if writable:
            self._loop.add_writer(fd, ready)
        else:
            self._loop.add_reader(fd, ready)
        self._waiters.add(waiter)
        try:
            if patience is None:
                return await waiter
            done, _ = await asyncio.wait([waiter], timeout=patience)
            return bool(done)
        finally:
            self._waiters.discard(waiter)
            if self._master == fd:  # still ours: the number was not reused after a close
                if writable:
                    self._loop.remove_writer(fd)
                else:
                    self._loop.remove_reader(fd)

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(True)

    def resize(self, cols: int, rows: int) -> None:
        """Set the terminal's size; the kernel sends SIGWINCH to its foreground group."""
        _check_size(cols, rows)
        if self._master is not None:
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, _winsize(cols, rows))

    # --- end ----------------------------------------------------------------------------

    async def wait(self) -> int:
        """The shell's exit status: its exit code, or 128+N when signal N killed it."""
        return await asyncio.shield(self._exit)

    async def terminate(self, grace_seconds: float = DEFAULT_KILL_GRACE) -> None:
        """Hang up: SIGHUP the session, SIGKILL what is left after `grace_seconds`, close."""
        await asyncio.shield(self._begin_hang_up(grace_seconds))

    def _begin_hang_up(self, grace_seconds: float) -> asyncio.Task[None]:
        if self._closing is None:
            self._closing = asyncio.create_task(
                self._hang_up(grace_seconds), name=f"corral-pty-hangup-{self.pid}"
            )
        return self._closing

    async def _hang_up(self, grace_seconds: float) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        deadline = self._loop.time() + grace_seconds
        sid = self.pid
        groups = await self._live_groups()
        if groups:
            logger.info("hanging up session pid=%d groups=%d", sid, len(groups))
            _signal_groups(groups, signal.SIGHUP)
            _signal_groups(groups, signal.SIGCONT)  # stopped jobs must see the SIGHUP
        killing = False
        while groups:
            now = self._loop.time()
            if now >= deadline:
                if killing:
                    logger.warning("session pid=%d: processes survive SIGKILL", sid)
                    break
                logger.info("session pid=%d still running after the grace: SIGKILL", sid)
                killing, deadline = True, now + _KILL_WAIT
            if killing:
                _signal_groups(groups, signal.SIGKILL)  # again for what forked meanwhile
            if self._exit.done():
                await asyncio.sleep(min(deadline - now, _HANGUP_POLL))
            else:
                await asyncio.wait([self._exit], timeout=deadline - now)
            groups = await self._live_groups()
        self._close()

    async def _live_groups(self) -> set[int]:
        groups = await offload(session_groups, self.pid)
        if not self._exit.done():
            groups.add(self.pid)  # even where /proc hides it
        return groups

    def _close(self) -> None:
        fd, self._master = self._master, None
        if fd is not None:
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
            os.close(fd)
        self._unwatch_exit()
        if self._profile_path is not None:
            _remove(self._profile_path)
            self._profile_path = None
        self._wake_waiters()

    async def _enforce_limits(self) -> None:
        while not self._exit.done():
            now = self._loop.time()
            reason = self._clock.expired(now)
            if reason is not None:
                self.ended_reason = reason
                logger.info("session pid=%d ends: %s", self.pid, reason)
                self._begin_hang_up(self._limits.kill_grace_seconds)
                return
            await asyncio.wait([self._exit], timeout=self._clock.next_check(now))

    # --- the shell's exit -----------------------------------------------------------------

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            self._poll_exit()  # no pidfd (kernel before 5.3): poll instead
            return
        self._loop.add_reader(self._pidfd, self._check_exit)

    def _poll_exit(self) -> None:
        self._poll_handle = None
        self._check_exit()
        if not self._exit.done():
            self._poll_handle = self._loop.call_later(0.05, self._poll_exit)

    def _check_exit(self) -> None:
        code = self._popen.poll()  # reaps the shell
        if code is None:
            return
        self._unwatch_exit()
        status = 128 - code if code < 0 else code
        if not self._exit.done():
            self._exit.set_result(status)
            logger.info("session shell pid=%d exited status=%d", self.pid, status)
        self._wake_waiters()

    def _unwatch_exit(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
