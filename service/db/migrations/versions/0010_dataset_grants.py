"""dataset_grants: the buckets and prefixes a project's Vertex dataset URIs may read (none until an admin grants)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_grants",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.String(length=1100), nullable=False),
        sa.Column("scheme", sa.String(length=8), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=False),
        sa.Column("prefix", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index(op.f("ix_dataset_grants_project_id"), "dataset_grants", ["project_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dataset_grants_project_id"), table_name="dataset_grants")
    op.drop_table("dataset_grants")
