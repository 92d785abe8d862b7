"""AWS credentials for the Systems Manager wire API: tokens with an access key id.

Such a token has no bearer secret (`token_hash` becomes nullable) but an access key
id and its secret access key, sealed under a key-encryption key that is not in the
database (the secret must be readable to check SigV4 signatures).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the access key columns; let tokens without a bearer secret exist."""
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("token_hash", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("access_key_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("secret_sealed", sa.Text, nullable=True))
        batch.create_index("ix_api_tokens_access_key_id", ["access_key_id"], unique=True)


def downgrade() -> None:
    """Drop AWS credentials (they cannot exist without the columns) and the columns."""
    op.execute(sa.text("DELETE FROM api_tokens WHERE access_key_id IS NOT NULL"))
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_access_key_id")
        batch.drop_column("secret_sealed")
        batch.drop_column("access_key_id")
        batch.alter_column("token_hash", existing_type=sa.String(64), nullable=False)
