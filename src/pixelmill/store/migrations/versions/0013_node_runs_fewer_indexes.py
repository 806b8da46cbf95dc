"""node_runs: drop the indexes another one's prefix already gives, and look up the cache by key and account

Every claim and completion updates a node run's status, and each index on it is
written with it.  (status), (queue, status) and (execution_id) are each the
leading columns of another index: (status, queued_at), the waiting index and
(execution_id, status, queued_at).  A cache hit is a run of the same account
with the same key, read without joining its execution.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 01:40:00
"""
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_node_runs_cache', 'node_runs', ['cache_key', 'account_id', 'status'], unique=False)
    op.drop_index('ix_node_runs_cache_key', table_name='node_runs')
    op.drop_index('ix_node_runs_status', table_name='node_runs')
    op.drop_index('ix_node_runs_queue_status', table_name='node_runs')
    op.drop_index('ix_node_runs_execution_id', table_name='node_runs')


def downgrade() -> None:
    op.create_index('ix_node_runs_execution_id', 'node_runs', ['execution_id'], unique=False)
    op.create_index('ix_node_runs_queue_status', 'node_runs', ['queue', 'status'], unique=False)
    op.create_index('ix_node_runs_status', 'node_runs', ['status'], unique=False)
    op.create_index('ix_node_runs_cache_key', 'node_runs', ['cache_key'], unique=False)
    op.drop_index('ix_node_runs_cache', table_name='node_runs')
