"""Exact credits: the ledger in integer micro-credits, and a stored balance per account

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 13:00:00

Ledger amounts were floats rounded to 4 decimals; each becomes the integer
number of micro-credits it stood for (``round(amount * 10^6)``, exact for such
values), and each account's ``credit_balance_micro`` is set to the sum of its
entries, so every existing balance is kept to the last digit.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('credit_balance_micro', sa.BigInteger(), nullable=False, server_default='0'))
    with op.batch_alter_table('credit_ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column('amount_micro', sa.BigInteger(), nullable=True))
    op.execute("UPDATE credit_ledger SET amount_micro = CAST(ROUND(amount * 1000000) AS BIGINT)")
    with op.batch_alter_table('credit_ledger', schema=None) as batch_op:
        batch_op.alter_column('amount_micro', existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column('amount')
    op.execute(
        "UPDATE accounts SET credit_balance_micro = COALESCE("
        "(SELECT SUM(l.amount_micro) FROM credit_ledger l WHERE l.account_id = accounts.id), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table('credit_ledger', schema=None) as batch_op:
        batch_op.add_column(sa.Column('amount', sa.Float(), nullable=True))
    op.execute("UPDATE credit_ledger SET amount = amount_micro / 1000000.0")
    with op.batch_alter_table('credit_ledger', schema=None) as batch_op:
        batch_op.alter_column('amount', existing_type=sa.Float(), nullable=False)
        batch_op.drop_column('amount_micro')
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('credit_balance_micro')
