"""job resources: the processes a job trains in (Hone's `resources`: nodes x GPUs per node)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("resources", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "resources")
