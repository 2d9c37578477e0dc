"""tuned models: where each came from (a job, or an adapter imported through POST /v1/models/import, which no job made)

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tuned_models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=16), nullable=False, server_default="job"))
        batch_op.alter_column("job_id", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM tuned_models WHERE job_id IS NULL")  # imported models have no job to point at
    with op.batch_alter_table("tuned_models", schema=None) as batch_op:
        batch_op.alter_column("job_id", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column("origin")
