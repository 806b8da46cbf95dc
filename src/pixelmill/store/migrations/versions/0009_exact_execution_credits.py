"""Exact credits on executions and node runs: integer micro-credits, as the ledger counts them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 16:30:00

``executions.cost_estimate`` / ``cost_actual`` and ``node_runs.cost`` were floats
rounded to 4 decimals; each becomes the integer number of micro-credits it stood
for (``round(value * 10^6)``, exact for such values) in ``cost_estimate_micro`` /
``cost_actual_micro`` / ``cost_micro``, so every recorded price and charge is kept
to the last digit.  A NULL ``cost_actual`` (not finished) stays NULL.
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_TO_MICRO = "CAST(ROUND({col} * 1000000) AS BIGINT)"


def upgrade() -> None:
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cost_estimate_micro', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('cost_actual_micro', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cost_micro', sa.BigInteger(), nullable=True))
    op.execute(
        "UPDATE executions SET cost_estimate_micro = " + _TO_MICRO.format(col="COALESCE(cost_estimate, 0)")
        + ", cost_actual_micro = CASE WHEN cost_actual IS NULL THEN NULL ELSE " + _TO_MICRO.format(col="cost_actual") + " END"
    )
    op.execute("UPDATE node_runs SET cost_micro = " + _TO_MICRO.format(col="COALESCE(cost, 0)"))
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.alter_column('cost_estimate_micro', existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column('cost_estimate')
        batch_op.drop_column('cost_actual')
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.alter_column('cost_micro', existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column('cost')


def downgrade() -> None:
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cost_estimate', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('cost_actual', sa.Float(), nullable=True))
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cost', sa.Float(), nullable=True))
    op.execute("UPDATE executions SET cost_estimate = cost_estimate_micro / 1000000.0, cost_actual = cost_actual_micro / 1000000.0")
    op.execute("UPDATE node_runs SET cost = cost_micro / 1000000.0")
    with op.batch_alter_table('executions', schema=None) as batch_op:
        batch_op.alter_column('cost_estimate', existing_type=sa.Float(), nullable=False)
        batch_op.drop_column('cost_estimate_micro')
        batch_op.drop_column('cost_actual_micro')
    with op.batch_alter_table('node_runs', schema=None) as batch_op:
        batch_op.alter_column('cost', existing_type=sa.Float(), nullable=False)
        batch_op.drop_column('cost_micro')
