"""Parameter Store: parameters (latest metadata) and their versions; commands record the
Parameter Store references they resolved."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the parameter tables."""
    op.create_table(
        "parameters",
        sa.Column("name", sa.String(1011), primary_key=True),
        sa.Column("parent", sa.String(1011), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("data_type", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("allowed_pattern", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("last_modified", sa.Float, nullable=False),
        sa.Column("last_modified_by", sa.String(96), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("policies", sa.JSON, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("notify_at", sa.Float, nullable=True),
        sa.Column("notified", sa.String(32), nullable=False),
    )
    op.create_index("ix_parameters_parent", "parameters", ["parent"])
    op.create_index("ix_parameters_expires_at", "parameters", ["expires_at"])
    op.create_index("ix_parameters_notify_at", "parameters", ["notify_at"])
    op.create_table(
        "parameter_versions",
        sa.Column("name", sa.String(1011), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=True),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("data_type", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("allowed_pattern", sa.Text, nullable=True),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("policies", sa.JSON, nullable=False),
        sa.Column("last_modified", sa.Float, nullable=False),
        sa.Column("last_modified_by", sa.String(96), nullable=False),
    )
    op.create_index("ix_parameter_versions_key_id", "parameter_versions", ["key_id"])
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("references", sa.JSON, nullable=True))


def downgrade() -> None:
    """Drop the parameter tables."""
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("references")
    op.drop_table("parameter_versions")
    op.drop_table("parameters")
