"""Indexes that keep submit, credits and polls flat as history grows

* executions (account_id, status): the active-task count reads only the
  account's queued and running executions;
* node_runs (status, queued_at): a queue position counts only queued runs;
* node_runs (status, finished_at): the newest finished runs (seeding run-time
  estimates) are read from the end of the index.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:45:00
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_executions_account_status', 'executions', ['account_id', 'status'])
    op.create_index('ix_node_runs_status_queued', 'node_runs', ['status', 'queued_at'])
    op.create_index('ix_node_runs_status_finished', 'node_runs', ['status', 'finished_at'])


def downgrade() -> None:
    op.drop_index('ix_node_runs_status_finished', table_name='node_runs')
    op.drop_index('ix_node_runs_status_queued', table_name='node_runs')
    op.drop_index('ix_executions_account_status', table_name='executions')
