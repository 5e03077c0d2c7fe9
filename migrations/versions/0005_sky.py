"""sky: footprints, their corners and HEALPix cells (the spatial index)

Adds ``footprints`` (one per frame: source header | solved | estimated, centre, circumscribed
radius, pixel scale, HEALPix order, the WCS cards of header and solved footprints, the solve
reduction), ``footprint_corners`` (four per footprint: the corner and the unit vectors of the
exact position tests) and ``footprint_cells`` (HEALPix cells, NESTED, primary key cell first).
See archive/db/sky.py. Footprints of frames already catalogued are added by ``archive solve``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('footprints',
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('ra_deg', sa.Float(), nullable=False),
    sa.Column('dec_deg', sa.Float(), nullable=False),
    sa.Column('radius_deg', sa.Float(), nullable=False),
    sa.Column('pixel_scale_arcsec', sa.Float(), nullable=True),
    sa.Column('healpix_order', sa.Integer(), nullable=False),
    sa.Column('wcs_header', sa.Text(), nullable=True),
    sa.Column('reduction_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_footprints_frame_id_frames')),
    sa.ForeignKeyConstraint(['reduction_id'], ['reductions.id'], name=op.f('fk_footprints_reduction_id_reductions')),
    sa.PrimaryKeyConstraint('frame_id', name=op.f('pk_footprints'))
    )
    with op.batch_alter_table('footprints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_footprints_source'), ['source'], unique=False)
        batch_op.create_index(batch_op.f('ix_footprints_reduction_id'), ['reduction_id'], unique=False)
    corner_columns = [sa.Column(name, sa.Float(), nullable=False) for name in (
        'ra_deg', 'dec_deg', 'x', 'y', 'z', 'nx', 'ny', 'nz', 'ux', 'uy', 'uz', 'wx', 'wy', 'wz')]
    op.create_table('footprint_corners',
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('corner', sa.Integer(), nullable=False),
    *corner_columns,
    sa.ForeignKeyConstraint(['frame_id'], ['footprints.frame_id'], name=op.f('fk_footprint_corners_frame_id_footprints')),
    sa.PrimaryKeyConstraint('frame_id', 'corner', name=op.f('pk_footprint_corners'))
    )
    op.create_table('footprint_cells',
    sa.Column('cell', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['footprints.frame_id'], name=op.f('fk_footprint_cells_frame_id_footprints')),
    sa.PrimaryKeyConstraint('cell', 'frame_id', name=op.f('pk_footprint_cells'))
    )
    with op.batch_alter_table('footprint_cells', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_footprint_cells_frame_id'), ['frame_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('footprint_cells', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_footprint_cells_frame_id'))
    op.drop_table('footprint_cells')
    op.drop_table('footprint_corners')
    with op.batch_alter_table('footprints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_footprints_reduction_id'))
        batch_op.drop_index(batch_op.f('ix_footprints_source'))
    op.drop_table('footprints')
