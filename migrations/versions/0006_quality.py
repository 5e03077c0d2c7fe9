"""quality: measurements per frame, quality flags and a person's overrides (issue 11)

Adds ``frame_measurements`` (one row per frame and measurement version: background, noise,
stars, FWHM, eccentricity, saturation, signal weight, the star list; for calibrations their
level, read noise, dark current, hot pixels, flat SNR and falloff, and the comparison of a
master with the previous one), ``quality_flags`` (one row per violated quality rule: value,
limit, rule and its version) and ``quality_overrides`` (accept or reject by a person, with a
reason).

Follows 0005 (sky footprints).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('frame_measurements',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=30), nullable=False),
    sa.Column('source_frame_id', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('measured_at', sa.DateTime(), nullable=False),
    sa.Column('background_adu', sa.Float(), nullable=True),
    sa.Column('noise_adu', sa.Float(), nullable=True),
    sa.Column('background_e', sa.Float(), nullable=True),
    sa.Column('noise_e', sa.Float(), nullable=True),
    sa.Column('gain_e_per_adu', sa.Float(), nullable=True),
    sa.Column('n_stars', sa.Integer(), nullable=True),
    sa.Column('fwhm_px', sa.Float(), nullable=True),
    sa.Column('fwhm_arcsec', sa.Float(), nullable=True),
    sa.Column('plate_scale_arcsec', sa.Float(), nullable=True),
    sa.Column('eccentricity', sa.Float(), nullable=True),
    sa.Column('saturated_fraction', sa.Float(), nullable=True),
    sa.Column('weight', sa.Float(), nullable=True),
    sa.Column('read_noise_adu', sa.Float(), nullable=True),
    sa.Column('read_noise_e', sa.Float(), nullable=True),
    sa.Column('dark_current_adu_s', sa.Float(), nullable=True),
    sa.Column('dark_current_e_s', sa.Float(), nullable=True),
    sa.Column('hot_pixels', sa.Integer(), nullable=True),
    sa.Column('flat_snr', sa.Float(), nullable=True),
    sa.Column('flat_falloff', sa.Float(), nullable=True),
    sa.Column('previous_master_id', sa.Integer(), nullable=True),
    sa.Column('changed_fraction', sa.Float(), nullable=True),
    sa.Column('stars', sa.JSON(), nullable=True),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('judged_version', sa.String(length=50), nullable=True),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_frame_measurements_frame_id_frames')),
    sa.ForeignKeyConstraint(['previous_master_id'], ['frames.id'], name=op.f('fk_frame_measurements_previous_master_id_frames')),
    sa.ForeignKeyConstraint(['source_frame_id'], ['frames.id'], name=op.f('fk_frame_measurements_source_frame_id_frames')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_frame_measurements'))
    )
    with op.batch_alter_table('frame_measurements', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_frame_measurements_frame_id'), ['frame_id'], unique=False)
        batch_op.create_index('uq_frame_measurements_frame_version', ['frame_id', 'version'], unique=True)

    op.create_table('quality_overrides',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('verdict', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('by_user', sa.String(length=100), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_quality_overrides_frame_id_frames')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quality_overrides'))
    )
    with op.batch_alter_table('quality_overrides', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quality_overrides_frame_id'), ['frame_id'], unique=False)

    op.create_table('quality_flags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('measurement_id', sa.Integer(), nullable=False),
    sa.Column('rule', sa.String(length=100), nullable=False),
    sa.Column('rule_version', sa.String(length=50), nullable=False),
    sa.Column('metric', sa.String(length=50), nullable=False),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('limit_value', sa.Float(), nullable=False),
    sa.Column('bound', sa.String(length=5), nullable=False),
    sa.Column('scope', sa.String(length=10), nullable=False),
    sa.Column('action', sa.String(length=10), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_quality_flags_frame_id_frames')),
    sa.ForeignKeyConstraint(['measurement_id'], ['frame_measurements.id'], name=op.f('fk_quality_flags_measurement_id_frame_measurements')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quality_flags'))
    )
    with op.batch_alter_table('quality_flags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quality_flags_frame_id'), ['frame_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_quality_flags_measurement_id'), ['measurement_id'], unique=False)

def downgrade() -> None:
    with op.batch_alter_table("quality_flags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quality_flags_measurement_id'))
        batch_op.drop_index(batch_op.f('ix_quality_flags_frame_id'))

    op.drop_table('quality_flags')
    with op.batch_alter_table('quality_overrides', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quality_overrides_frame_id'))

    op.drop_table('quality_overrides')
    with op.batch_alter_table('frame_measurements', schema=None) as batch_op:
        batch_op.drop_index('uq_frame_measurements_frame_version')
        batch_op.drop_index(batch_op.f('ix_frame_measurements_frame_id'))

    op.drop_table('frame_measurements')
