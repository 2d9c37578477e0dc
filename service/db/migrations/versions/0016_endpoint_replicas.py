"""endpoint replicas: engines an endpoint asks for, how many are ready, and where requests go

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replicas", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("ready_replicas", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("urls", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_column("urls")
        batch_op.drop_column("ready_replicas")
        batch_op.drop_column("replicas")
