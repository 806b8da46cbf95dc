"""accounts.safety_tolerance: a moderation tolerance the operator pins for an account

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 13:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('accounts', sa.Column('safety_tolerance', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('accounts') as batch:
        batch.drop_column('safety_tolerance')
