"""checkpoint_permissions: a tuned model or checkpoint of one project shared with another (OpenAI's checkpoint
permissions, granted with the admin key)

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_permissions",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("owner_project_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["owner_project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sa.UniqueConstraint("model", "project_id", name="uq_checkpoint_permissions_model_project"),
    )
    op.create_index(op.f("ix_checkpoint_permissions_project_id"), "checkpoint_permissions", ["project_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_checkpoint_permissions_project_id"), table_name="checkpoint_permissions")
    op.drop_table("checkpoint_permissions")
