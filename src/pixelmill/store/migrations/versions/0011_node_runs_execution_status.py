"""node_runs (execution_id, status, queued_at): an execution's next waiting run read by index, not by walking the queue

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 22:30:00
"""
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_node_runs_execution_status', 'node_runs', ['execution_id', 'status', 'queued_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_node_runs_execution_status', table_name='node_runs')
