"""Sessions: interactive shells through a node's agent, with their recordings."""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the sessions table."""
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("node_id", sa.String(20), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(96), nullable=False),
        sa.Column("os_user", sa.String(64), nullable=True),
        sa.Column("command", sa.Text, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("bytes_in", sa.BigInteger, nullable=False),
        sa.Column("bytes_out", sa.BigInteger, nullable=False),
        sa.Column("recording_key", sa.Text, nullable=True),
        sa.Column("grant_id", sa.String(40), nullable=True),
    )
    op.create_index("ix_sessions_node_status", "sessions", ["node_id", "status"])
    op.create_index("ix_sessions_owner", "sessions", ["owner"])
    op.create_index("ix_sessions_status", "sessions", ["status"])
    op.create_index("ix_sessions_created_at", "sessions", ["created_at"])


def downgrade() -> None:
    """Drop the sessions table."""
    op.drop_table("sessions")
