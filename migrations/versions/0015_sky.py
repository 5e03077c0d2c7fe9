"""projects by sky position: ``projects.cone_*`` and ``projects.covers_*``

A project can be defined by where its frames are on the sky, with the footprint filters of
``archive frames`` (:class:`archive.db.frames.FrameFilter`): ``--cone RA DEC RADIUS`` (the
footprint comes within RADIUS of the position, deg) and ``--covers RA DEC`` (the footprint
contains the position, deg). Each is stored as its numbers, NULL when not given; a project
given only a position stores an empty ``target`` (no name filter).

Rows of earlier catalogues get NULL (no position filter), so their selection is unchanged.
Downgrade drops the columns (a position-only project then selects every light: its filters
are lost with them).

On SQLite the columns are added and dropped in place (batch mode with ``recreate='never'``):
``projects`` is referenced by ``project_goals``, which a copy of the table would cascade into.

Revision ID: 0015_sky
Revises: 0012_units
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0015_sky'
down_revision = '0012_units'
branch_labels = None
depends_on = None

COLUMNS = ('cone_ra_deg', 'cone_dec_deg', 'cone_radius_deg', 'covers_ra_deg', 'covers_dec_deg')


def upgrade() -> None:
    with op.batch_alter_table('projects', schema=None, recreate='never') as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('projects', schema=None, recreate='never') as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
