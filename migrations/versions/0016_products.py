"""the products by reduction: a partial index ``ix_frames_products`` on ``frames.reduction_id``

The night report finds the masters and stacks made from a night's frames through the night's
reductions (``reduction_inputs``) and the frames those reductions made (``frames.reduction_id``).
SQLite's statistics of ``ix_frames_reduction_id`` count the raw frames' NULLs as one value
held by (nearly) every row, so its planner never seeks there and reads every master of the
catalogue instead (30-45 ms on 1,000,000 frames and 24,000 masters). The same index over the
products only (``WHERE reduction_id IS NOT NULL``) has the statistics of the products: small,
and chosen. PostgreSQL gets it too (one schema on both backends; it is as small there).

Only an index: no row changes; downgrade drops it.

Revision ID: 0016_products
Revises: 0015_sky
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0016_products"
down_revision = "0015_sky"
branch_labels = None
depends_on = None


def upgrade() -> None:
    where = sa.text("reduction_id IS NOT NULL")
    op.create_index("ix_frames_products", "frames", ["reduction_id"], unique=False,
                    sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index("ix_frames_products", table_name="frames")
