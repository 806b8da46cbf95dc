"""node_runs.published_at: which queued node runs have reached the job queue

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 16:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('published_at', sa.Float(), nullable=True))
    # runs queued before this revision were published when they were queued
    op.execute("UPDATE node_runs SET published_at = queued_at WHERE queued_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.drop_column('published_at')
