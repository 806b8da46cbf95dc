"""node_runs.account_id and .priority (copied from their execution) and an index of waiting runs by
queue, account and pick order: a pick reads each account's first waiting run instead of the whole queue

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 22:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('node_runs', sa.Column('account_id', sa.String(length=40), nullable=True))
    op.add_column('node_runs', sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
    op.execute(
        "UPDATE node_runs SET "
        "account_id = (SELECT executions.account_id FROM executions WHERE executions.id = node_runs.execution_id), "
        "priority = COALESCE((SELECT executions.priority FROM executions WHERE executions.id = node_runs.execution_id), 0)"
    )
    op.create_index(
        'ix_node_runs_waiting', 'node_runs', ['queue', 'status', 'account_id', sa.text('priority DESC'), 'queued_at', 'id'], unique=False
    )


def downgrade() -> None:
    op.drop_index('ix_node_runs_waiting', table_name='node_runs')
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.drop_column('priority')
        batch_op.drop_column('account_id')
