"""serving: endpoints, per-model gateway usage, jobs.auto_deploy

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("auto_deploy", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_table(
        "endpoints",
        sa.Column("seq", SeqType, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("base_model", sa.String(length=512), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("checkpoint_id", sa.String(length=64), nullable=True),
        sa.Column("weights_prefix", sa.String(length=512), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("engine", sa.String(length=16), nullable=True),
        sa.Column("engine_key", sa.String(length=256), nullable=True),
        sa.Column("url", sa.String(length=512), nullable=True),
        sa.Column("restarts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("ready_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
        ),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_endpoints_project_seq", "endpoints", ["project_id", "seq"], unique=False)
    op.create_index(op.f("ix_endpoints_model"), "endpoints", ["model"], unique=False)
    op.create_index(op.f("ix_endpoints_state"), "endpoints", ["state"], unique=False)
    op.create_table(
        "model_usage",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=512), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms_total", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "model"),
    )


def downgrade() -> None:
    op.drop_table("model_usage")
    op.drop_index(op.f("ix_endpoints_state"), table_name="endpoints")
    op.drop_index(op.f("ix_endpoints_model"), table_name="endpoints")
    op.drop_index("ix_endpoints_project_seq", table_name="endpoints")
    op.drop_table("endpoints")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("auto_deploy")
