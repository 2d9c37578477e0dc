"""training runs: job attempts, trainer token, executor handle, priority; admin-registered base models

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("failures", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("trainer_token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("executor_ref", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("last_report_at", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "base_models",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("base_models")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("priority")
        batch_op.drop_column("last_report_at")
        batch_op.drop_column("executor_ref")
        batch_op.drop_column("trainer_token_hash")
        batch_op.drop_column("failures")
        batch_op.drop_column("attempts")
