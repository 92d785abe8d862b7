"""Server settings: every timeout, interval and limit is here, in seconds or bytes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `corral server` needs to start; tests shorten the intervals."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    # None: SQLite at data_dir/corral.db. Otherwise a SQLAlchemy/libpq URL
    # (postgresql://... is accepted and mapped to the asyncpg driver).
    database_url: str | None = None
    # Agents send a heartbeat this often (told to them in Welcome).
    heartbeat_seconds: float = 30.0
    # A node whose connection dropped is ConnectionLost; one silent for this long is too.
    connection_lost_seconds: float = 90.0
    # How often the dispatcher re-checks deadlines (delivery and execution backstops).
    dispatch_tick_seconds: float = 1.0
    # Largest frame accepted from an agent.
    max_message_bytes: int = 1024 * 1024
    # Every WebSocket (agents, sessions) is pinged this often; one that does not answer
    # within the timeout is closed, so a half-open connection (a laptop that went to
    # sleep, a network that vanished) is noticed and a session's grace period starts.
    ws_ping_interval_seconds: float | None = 20.0
    ws_ping_timeout_seconds: float | None = 20.0
    # Extra time past an invocation's execution timeout before the server gives up
    # on an agent that never reported (the agent itself enforces the timeout).
    execution_grace_seconds: float = 60.0
    # Characters of output returned inline by the API (Systems Manager's limits).
    stdout_inline_chars: int = 24_000
    stderr_inline_chars: int = 8_000
    # Status changes nobody waits for are held this long so they share one commit.
    write_batch_seconds: float = 0.05
    # After a failed group commit, the writer retries this much later.
    write_retry_seconds: float = 1.0
    # Heartbeat-driven last_seen updates are written at most this often (one batch).
    last_seen_flush_seconds: float = 5.0
    # How often the server looks for nodes that went silent (on any replica).
    presence_check_seconds: float = 10.0
    # On shutdown: how long agent connections and the dispatcher get to finish.
    shutdown_grace_seconds: float = 10.0
    # Freeze the objects that exist once the server has started out of the garbage
    # collector's way (set by `corral server`; tests leave their process alone).
    freeze_gc_after_start: bool = False
    # Log level name for the server process.
    log_level: str = "info"
    extra: dict[str, str] = field(default_factory=dict)
    # Audit log: the HMAC key (outside the database; $CORRAL_AUDIT_KEY overrides) and
    # the append-only file of signed checkpoints. None: in data_dir.
    audit_key_file: Path | None = None
    audit_checkpoint_file: Path | None = None
    # Records of concurrent calls share one commit if they arrive within this window.
    audit_batch_seconds: float = 0.002
    # A signed checkpoint is written this often (when there are new records).
    audit_checkpoint_seconds: float = 300.0
    # Failed authentications: this many from one address within the window lock it
    # out (HTTP 429) for the lockout period.
    auth_failure_limit: int = 20
    auth_failure_window_seconds: float = 60.0
    auth_lockout_seconds: float = 60.0
    # An API token's principal (user, roles, grants) is reused for this long; changes
    # made through this server apply at once, through another replica within this time.
    auth_cache_seconds: float = 5.0
    # Open streams (sessions, follows) re-check their principal this often.
    stream_recheck_seconds: float = 5.0
    # Signed node requests: largest accepted clock difference.
    node_request_max_skew_seconds: float = 300.0
    # Requests signed with AWS credentials (SigV4): largest accepted clock difference
    # (AWS itself allows 15 minutes).
    sigv4_max_skew_seconds: float = 300.0
    # Parameter Store: where key-encryption keys live (None: data_dir/keys), and how
    # often expiry and notification policies are applied.
    key_dir: Path | None = None
    parameter_policy_seconds: float = 60.0
    # GetParameter (latest version by name) answers from memory for this long; writes
    # through this server apply at once, through another replica within this time.
    parameter_cache_seconds: float = 1.0
    # Sessions: the node and the operator must both connect within this time; the shell
    # ends after this long without input or output, or after the maximum (None: none).
    session_connect_timeout_seconds: float = 30.0
    session_idle_timeout_seconds: float | None = 1200.0
    session_max_duration_seconds: float | None = None
    # Largest data frame on a session stream, and whether keystrokes are recorded too.
    session_max_frame_bytes: int = 64 * 1024
    session_record_input: bool = False
    # A shell session survives a dropped operator or node connection this long.
    session_resume_grace_seconds: float = 60.0
    # Shell commands every interactive session runs first (Session Manager's shell profile).
    session_shell_profile: str | None = None
    # Just-in-time access: the shortest and longest duration a request may ask for.
    access_min_duration_seconds: float = 60.0
    access_max_duration_seconds: float = 24 * 3600.0
    # TLS (see corral/server/tls.py): "auto" serves HTTPS/WSS unless the listen host is
    # loopback (or always, when tls_cert is given); "on" and "off" force it.
    tls: str = "auto"
    # Operator-supplied certificate (chain) and key; None: generated in data_dir/tls.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # The CA whose fingerprint agents pin (with tls_cert); None: the leaf is pinned.
    tls_ca: Path | None = None
    # Extra subjectAltNames (DNS names or IPs) for the generated server certificate.
    tls_san: tuple[str, ...] = ()

    @property
    def tls_enabled(self) -> bool:
        """Whether the server serves HTTPS/WSS."""
        if self.tls == "auto":
            return self.tls_cert is not None or not is_loopback_host(self.host)
        return self.tls == "on"

    @property
    def tls_dir(self) -> Path:
        """Where the generated CA and server certificate live."""
        return self.data_dir / "tls"

    @property
    def sqlite_path(self) -> Path:
        """Where the embedded database lives."""
        return self.data_dir / "corral.db"

    @property
    def admin_token_path(self) -> Path:
        """The bootstrap admin token written on first start (mode 0600)."""
        return self.data_dir / "admin-token"

    @property
    def audit_key_path(self) -> Path:
        """The audit HMAC key file (mode 0600)."""
        return self.audit_key_file or self.data_dir / "audit.key"

    @property
    def audit_checkpoint_path(self) -> Path:
        """The append-only file of signed audit checkpoints."""
        return self.audit_checkpoint_file or self.data_dir / "audit" / "checkpoints.jsonl"

    @property
    def key_path(self) -> Path:
        """The directory of key-encryption key files (mode 0700, files 0600)."""
        return self.key_dir or self.data_dir / "keys"

    @property
    def blob_dir(self) -> Path:
        """Local blob store root (command output, later recordings)."""
        return self.data_dir / "blobs"
