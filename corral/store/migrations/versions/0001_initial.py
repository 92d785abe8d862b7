"""Initial schema: tokens, activations, nodes, documents, commands, invocations, settings."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create every table of the first release."""
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used_at", sa.Float, nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )
    op.create_table(
        "activations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("code_hash", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("registration_limit", sa.Integer, nullable=False),
        sa.Column("registrations_count", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("activation_id", sa.String(36), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("hostname", sa.Text, nullable=True),
        sa.Column("platform_type", sa.String(32), nullable=True),
        sa.Column("platform_name", sa.Text, nullable=True),
        sa.Column("platform_version", sa.Text, nullable=True),
        sa.Column("kernel", sa.Text, nullable=True),
        sa.Column("arch", sa.String(32), nullable=True),
        sa.Column("ip_addresses", sa.JSON, nullable=False),
        sa.Column("agent_version", sa.String(64), nullable=True),
        sa.Column("registered_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=True),
        sa.Column("ping_status", sa.String(32), nullable=False),
        sa.Column("deregistered", sa.Boolean, nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("schema_version", sa.String(16), nullable=False),
        sa.Column("document_type", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "document_heads",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("default_version", sa.Integer, nullable=False),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("owner", sa.String(32), nullable=False),
    )
    op.create_table(
        "commands",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("document_name", sa.String(128), nullable=False),
        sa.Column("document_version", sa.Integer, nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("parameters", sa.JSON, nullable=False),
        sa.Column("targets", sa.JSON, nullable=False),
        sa.Column("max_concurrency", sa.String(16), nullable=False),
        sa.Column("max_errors", sa.String(16), nullable=False),
        sa.Column("timeout_seconds", sa.Integer, nullable=True),
        sa.Column("delivery_timeout_seconds", sa.Integer, nullable=False),
        sa.Column("requested_at", sa.Float, nullable=False),
        sa.Column("completed_at", sa.Float, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.String(32), nullable=False),
        sa.Column("cancelling", sa.Boolean, nullable=False),
        sa.Column("target_count", sa.Integer, nullable=False),
    )
    op.create_index("ix_commands_requested_at", "commands", ["requested_at"])
    op.create_index("ix_commands_status", "commands", ["status"])
    op.create_table(
        "invocations",
        sa.Column("command_id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(20), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_details", sa.String(32), nullable=False),
        sa.Column("response_code", sa.Integer, nullable=True),
        sa.Column("stdout_head", sa.Text, nullable=False),
        sa.Column("stderr_head", sa.Text, nullable=False),
        sa.Column("stdout_bytes", sa.Integer, nullable=False),
        sa.Column("stderr_bytes", sa.Integer, nullable=False),
        sa.Column("requested_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float, nullable=True),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_invocations_node_status", "invocations", ["node_id", "status"])
    op.create_index("ix_invocations_status", "invocations", ["status"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    """Drop every table."""
    for name in (
        "settings",
        "invocations",
        "commands",
        "document_heads",
        "documents",
        "nodes",
        "activations",
        "api_tokens",
    ):
        op.drop_table(name)
