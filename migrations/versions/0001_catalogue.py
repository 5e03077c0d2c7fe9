"""catalogue: instruments, nights, frames, copies, ingest runs and problems

The first schema: the physical copies behind each frame, the normalized frame table with the
whole header and the source of every normalized value, instruments, nights, ingest runs and
the problems met while ingesting.

Revision ID: 0001
Revises: 
Create Date: 2026-11-21
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('ingest_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('software_version', sa.String(length=50), nullable=False),
    sa.Column('roots', sa.JSON(), nullable=False),
    sa.Column('n_new', sa.Integer(), nullable=False),
    sa.Column('n_unchanged', sa.Integer(), nullable=False),
    sa.Column('n_new_copies', sa.Integer(), nullable=False),
    sa.Column('n_changed', sa.Integer(), nullable=False),
    sa.Column('n_problems', sa.Integer(), nullable=False),
    sa.Column('n_skipped', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_runs'))
    )
    op.create_table('instruments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instruments')),
    sa.UniqueConstraint('name', name=op.f('uq_instruments_name'))
    )
    op.create_table('nights',
    sa.Column('night', sa.Date(), nullable=False),
    sa.PrimaryKeyConstraint('night', name=op.f('pk_nights'))
    )
    op.create_table('frames',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('image_type', sa.String(length=20), nullable=True),
    sa.Column('exposure_time_s', sa.Float(), nullable=True),
    sa.Column('filter_name', sa.String(length=100), nullable=True),
    sa.Column('binning_x', sa.Integer(), nullable=True),
    sa.Column('binning_y', sa.Integer(), nullable=True),
    sa.Column('ccd_temp_c', sa.Float(), nullable=True),
    sa.Column('set_temp_c', sa.Float(), nullable=True),
    sa.Column('gain', sa.Float(), nullable=True),
    sa.Column('offset', sa.Float(), nullable=True),
    sa.Column('readout_mode', sa.String(length=100), nullable=True),
    sa.Column('instrument_id', sa.Integer(), nullable=True),
    sa.Column('telescope', sa.String(length=200), nullable=True),
    sa.Column('target', sa.String(length=200), nullable=True),
    sa.Column('target_key', sa.String(length=200), nullable=True),
    sa.Column('ra_deg', sa.Float(), nullable=True),
    sa.Column('dec_deg', sa.Float(), nullable=True),
    sa.Column('date_obs', sa.DateTime(), nullable=True),
    sa.Column('date_obs_s', sa.BigInteger(), nullable=True),
    sa.Column('night', sa.Date(), nullable=True),
    sa.Column('naxis1', sa.Integer(), nullable=True),
    sa.Column('naxis2', sa.Integer(), nullable=True),
    sa.Column('naxis3', sa.Integer(), nullable=True),
    sa.Column('bitpix', sa.Integer(), nullable=True),
    sa.Column('hdu_index', sa.Integer(), nullable=False),
    sa.Column('header', sa.Text(), nullable=False),
    sa.Column('primary_header', sa.Text(), nullable=True),
    sa.Column('sources', sa.JSON(), nullable=False),
    sa.Column('duplicate_of_id', sa.Integer(), nullable=True),
    sa.Column('ingested_at', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['duplicate_of_id'], ['frames.id'], name=op.f('fk_frames_duplicate_of_id_frames')),
    sa.ForeignKeyConstraint(['instrument_id'], ['instruments.id'], name=op.f('fk_frames_instrument_id_instruments')),
    sa.ForeignKeyConstraint(['night'], ['nights.night'], name=op.f('fk_frames_night_nights')),
    sa.ForeignKeyConstraint(['run_id'], ['ingest_runs.id'], name=op.f('fk_frames_run_id_ingest_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_frames')),
    sa.UniqueConstraint('sha256', name=op.f('uq_frames_sha256'))
    )
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_frames_date_obs_s'), ['date_obs_s'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_duplicate_of_id'), ['duplicate_of_id'], unique=False)
        batch_op.create_index('ix_frames_exposure', ['instrument_id', 'date_obs'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_exposure_time_s'), ['exposure_time_s'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_filter_name'), ['filter_name'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_image_type'), ['image_type'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_instrument_id'), ['instrument_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_night'), ['night'], unique=False)
        batch_op.create_index(batch_op.f('ix_frames_target_key'), ['target_key'], unique=False)
        batch_op.create_index('ix_frames_type_night', ['image_type', 'night'], unique=False)

    op.create_table('ingest_problems',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('path', sa.String(length=4096), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=True),
    sa.Column('severity', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('resolved', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['ingest_runs.id'], name=op.f('fk_ingest_problems_run_id_ingest_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ingest_problems'))
    )
    with op.batch_alter_table('ingest_problems', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ingest_problems_path'), ['path'], unique=False)
        batch_op.create_index(batch_op.f('ix_ingest_problems_run_id'), ['run_id'], unique=False)

    op.create_table('copies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=4096), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('is_canonical', sa.Boolean(), nullable=False),
    sa.Column('is_current', sa.Boolean(), nullable=False),
    sa.Column('ingested_at', sa.DateTime(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_copies_frame_id_frames')),
    sa.ForeignKeyConstraint(['run_id'], ['ingest_runs.id'], name=op.f('fk_copies_run_id_ingest_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_copies'))
    )
    with op.batch_alter_table('copies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_copies_frame_id'), ['frame_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_copies_path'), ['path'], unique=False)
        batch_op.create_index('uq_copies_current_path', ['path'], unique=True, sqlite_where=sa.text('is_current'), postgresql_where=sa.text('is_current'))



def downgrade() -> None:
    with op.batch_alter_table('copies', schema=None) as batch_op:
        batch_op.drop_index('uq_copies_current_path', sqlite_where=sa.text('is_current'), postgresql_where=sa.text('is_current'))
        batch_op.drop_index(batch_op.f('ix_copies_path'))
        batch_op.drop_index(batch_op.f('ix_copies_frame_id'))

    op.drop_table('copies')
    with op.batch_alter_table('ingest_problems', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ingest_problems_run_id'))
        batch_op.drop_index(batch_op.f('ix_ingest_problems_path'))

    op.drop_table('ingest_problems')
    with op.batch_alter_table('frames', schema=None) as batch_op:
        batch_op.drop_index('ix_frames_type_night')
        batch_op.drop_index(batch_op.f('ix_frames_target_key'))
        batch_op.drop_index(batch_op.f('ix_frames_night'))
        batch_op.drop_index(batch_op.f('ix_frames_instrument_id'))
        batch_op.drop_index(batch_op.f('ix_frames_image_type'))
        batch_op.drop_index(batch_op.f('ix_frames_filter_name'))
        batch_op.drop_index(batch_op.f('ix_frames_exposure_time_s'))
        batch_op.drop_index('ix_frames_exposure')
        batch_op.drop_index(batch_op.f('ix_frames_duplicate_of_id'))
        batch_op.drop_index(batch_op.f('ix_frames_date_obs_s'))

    op.drop_table('frames')
    op.drop_table('nights')
    op.drop_table('instruments')
    op.drop_table('ingest_runs')
