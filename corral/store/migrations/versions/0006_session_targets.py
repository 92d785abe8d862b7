"""Port-forward sessions: the target they may open, and how many connections they carried."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the target host and port (NULL for shells) and a connection count."""
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("target_host", sa.String(255), nullable=True))
        batch.add_column(sa.Column("target_port", sa.Integer, nullable=True))
        batch.add_column(sa.Column("connections", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("connections")
        batch.drop_column("target_port")
        batch.drop_column("target_host")
