"""bayer: the Bayer pattern of a one-shot colour frame as a normalized column (issue 10)

Adds ``frames.bayer_pattern`` (RGGB, BGGR, GRBG or GBRG at the first pixel stored, the
offsets XBAYROFF/YBAYROFF applied; NULL for a monochrome frame), read by the dialects
(configs/dialects ``[bayer]``) and matched by the master library (configs/matching ``exact``).
Frames catalogued before this revision keep NULL until they are ingested again.

Follows 0006 (quality).

Revision ID: 0007_bayer
Revises: 0006
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_bayer'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bayer_pattern', sa.String(length=4), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.drop_column('bayer_pattern')
