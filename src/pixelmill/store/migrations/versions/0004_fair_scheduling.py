"""Fair scheduling and model residency: node_runs.queue and picked_at, execution start-by and run deadlines, worker_models

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 13:10:00

``node_runs.queue`` moves the queue name out of the params JSON into a column
the scheduler filters on; existing rows are filled from ``params.__queue__``.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'worker_models',
        sa.Column('worker', sa.String(length=200), nullable=False),
        sa.Column('model', sa.String(length=100), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('device', sa.String(length=20), nullable=True),
        sa.Column('memory_bytes', sa.BigInteger(), nullable=False),
        sa.Column('load_seconds', sa.Float(), nullable=True),
        sa.Column('last_used_at', sa.Float(), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('worker', 'model', name=op.f('pk_worker_models')),
    )
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('start_by', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('deadline_at', sa.Float(), nullable=True))
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('queue', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('picked_at', sa.Float(), nullable=True))
        batch_op.create_index('ix_node_runs_queue_status', ['queue', 'status'], unique=False)
        batch_op.create_index('ix_node_runs_started_at', ['started_at'], unique=False)
    conn = op.get_bind()
    runs = sa.table('node_runs', sa.column('id', sa.String), sa.column('params', sa.JSON), sa.column('queue', sa.String))
    for row in conn.execute(sa.select(runs.c.id, runs.c.params).where(runs.c.queue.is_(None))).all():
        queue = (row.params or {}).get('__queue__') or 'default'
        conn.execute(sa.update(runs).where(runs.c.id == row.id).values(queue=queue))


def downgrade() -> None:
    op.drop_table('worker_models')
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_node_runs_started_at')
        batch_op.drop_index('ix_node_runs_queue_status')
        batch_op.drop_column('picked_at')
        batch_op.drop_column('queue')
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.drop_column('deadline_at')
        batch_op.drop_column('start_by')
