"""Identity and audit: users, roles, access requests, the audit chain and checkpoints.

Tokens gain an owner (`user_id`); tokens that existed before users (the bootstrap
admin token) are given to a new `admin` user holding the `admin` role, so they keep
working exactly as before. Commands record who sent them.
"""

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the identity and audit tables; give existing tokens to an admin user."""
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("user_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("revoked_at", sa.Float, nullable=True))
        batch.create_index("ix_api_tokens_user_id", ["user_id"])
    with op.batch_alter_table("commands") as batch:
        batch.add_column(
            sa.Column("requested_by", sa.String(96), nullable=False, server_default="")
        )
    users = op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "roles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("policy", sa.JSON, nullable=False),
        sa.Column("builtin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("requester", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("targets", sa.JSON, nullable=False),
        sa.Column("duration_seconds", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("decided_at", sa.Float, nullable=True),
        sa.Column("decided_by", sa.String(96), nullable=True),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
        sa.Column("revoked_by", sa.String(96), nullable=True),
    )
    op.create_index(
        "ix_access_requests_requester_status", "access_requests", ["requester", "status"]
    )
    op.create_index("ix_access_requests_status", "access_requests", ["status"])
    op.create_table(
        "audit_records",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(96), nullable=False),
        sa.Column("token_id", sa.String(36), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("grant_id", sa.String(40), nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    for column in ("time_us", "principal", "action", "outcome", "grant_id"):
        op.create_index(f"ix_audit_records_{column}", "audit_records", [column])
    op.create_table(
        "audit_checkpoints",
        sa.Column("count", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )

    bind = op.get_bind()
    orphans = bind.execute(sa.text("SELECT count(*) FROM api_tokens")).scalar()
    if orphans:
        now = time.time()
        admin_id = str(uuid.uuid4())
        op.bulk_insert(
            users,
            [
                {
                    "id": admin_id,
                    "name": "admin",
                    "roles": ["admin"],
                    "disabled": False,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        bind.execute(
            sa.text("UPDATE api_tokens SET user_id = :user WHERE user_id IS NULL"),
            {"user": admin_id},
        )


def downgrade() -> None:
    """Drop the identity and audit tables and columns."""
    for table in ("audit_checkpoints", "audit_records", "access_requests", "roles", "users"):
        op.drop_table(table)
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("requested_by")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_user_id")
        batch.drop_column("revoked_at")
        batch.drop_column("user_id")
