"""pruned copies: ``copies.pruned_at``

``archive prune`` deletes intermediate products (calibrated and registered frames; masters and
stacks when asked) that can be remade from their provenance. The catalogue keeps the frame,
its reduction and its inputs; the copy that was deleted is kept as history with
``is_current`` false, ``is_canonical`` false and ``pruned_at`` the time (UTC) it was deleted. A
frame with a pruned copy and no current one is *pruned*: ``archive reduce`` remakes it (the
reduction that made it counts as not done) and records the new file as a new current copy.

Rows of earlier catalogues get NULL (nothing was pruned). Downgrade drops the column; pruned
copies then read as history (not current), as a file that changed at a known path does.

On SQLite the column is added and dropped in place (batch mode with ``recreate='never'``):
``copies`` is referenced by no table, but a copy of it would rebuild its partial unique index
for nothing.

Revision ID: 0011_prune
Revises: 0007_bayer
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0011_prune'
down_revision = '0007_bayer'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('copies', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('pruned_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('copies', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('pruned_at')
