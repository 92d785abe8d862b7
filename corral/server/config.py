"""Server settings: every timeout, interval and limit is here, in seconds or bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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
    # Log level name for the server process.
    log_level: str = "info"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def sqlite_path(self) -> Path:
        """Where the embedded database lives."""
        return self.data_dir / "corral.db"

    @property
    def admin_token_path(self) -> Path:
        """The bootstrap admin token written on first start (mode 0600)."""
        return self.data_dir / "admin-token"

    @property
    def blob_dir(self) -> Path:
        """Local blob store root (command output, later recordings)."""
        return self.data_dir / "blobs"
