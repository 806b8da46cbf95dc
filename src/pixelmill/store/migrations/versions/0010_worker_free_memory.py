"""worker_models.free_bytes: the memory a worker can still fill with models, for placing cold models

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 17:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('worker_models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('free_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('worker_models', schema=None) as batch_op:
        batch_op.drop_column('free_bytes')
