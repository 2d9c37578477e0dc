"""job evaluation: a job measured against its base (or another model) after training

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("evaluation", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("evaluation_open", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index(op.f("ix_jobs_evaluation_open"), "jobs", ["evaluation_open"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_evaluation_open"), table_name="jobs")
    op.drop_column("jobs", "evaluation_open")
    op.drop_column("jobs", "evaluation")
