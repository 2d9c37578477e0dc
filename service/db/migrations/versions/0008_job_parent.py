"""job parent: a job continued from a tuned model (or checkpoint) records which one, and where its weights are

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_model", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("parent_prefix", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("parent_prefix")
        batch_op.drop_column("parent_model")
