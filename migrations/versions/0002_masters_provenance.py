"""masters and provenance: reductions, their inputs, the master library, selections

Adds the provenance of derived frames (``reductions``: step, fingerprint, parameters,
software versions, host, times, status; ``reduction_inputs``: frame and role;
``frames.reduction_id``: the reduction that produced a frame), the master calibration
library (``masters``: kind, number combined, bad flag, validity) and the calibration
decisions (``calibration_selections``: chosen master, method, scale, rule version and every
candidate with its rank or the rule that rejected it).

On SQLite ``frames.reduction_id`` is added with a plain ``ALTER TABLE ... ADD COLUMN ...
REFERENCES`` (allowed by SQLite for a NULL-default column): a batch copy of ``frames`` would
have to drop a table that ``copies`` references, which fails on a populated catalogue with
foreign keys on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reductions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('step', sa.String(length=30), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('parameters', sa.JSON(), nullable=False),
    sa.Column('software', sa.JSON(), nullable=False),
    sa.Column('host', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('rule_version', sa.String(length=50), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reductions'))
    )
    with op.batch_alter_table('reductions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reductions_fingerprint'), ['fingerprint'], unique=False)
        batch_op.create_index(batch_op.f('ix_reductions_step'), ['step'], unique=False)

    op.create_table('reduction_inputs',
    sa.Column('reduction_id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_reduction_inputs_frame_id_frames')),
    sa.ForeignKeyConstraint(['reduction_id'], ['reductions.id'], name=op.f('fk_reduction_inputs_reduction_id_reductions')),
    sa.PrimaryKeyConstraint('reduction_id', 'frame_id', 'role', name=op.f('pk_reduction_inputs'))
    )
    with op.batch_alter_table('reduction_inputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reduction_inputs_frame_id'), ['frame_id'], unique=False)

    op.create_table('masters',
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('origin', sa.String(length=10), nullable=False),
    sa.Column('n_combined', sa.Integer(), nullable=True),
    sa.Column('combine_method', sa.String(length=30), nullable=True),
    sa.Column('bias_subtracted', sa.Boolean(), nullable=False),
    sa.Column('is_bad', sa.Boolean(), nullable=False),
    sa.Column('bad_reason', sa.Text(), nullable=True),
    sa.Column('valid_from', sa.DateTime(), nullable=True),
    sa.Column('valid_until', sa.DateTime(), nullable=True),
    sa.Column('rule_version', sa.String(length=50), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_masters_frame_id_frames')),
    sa.PrimaryKeyConstraint('frame_id', name=op.f('pk_masters'))
    )
    with op.batch_alter_table('masters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_masters_kind'), ['kind'], unique=False)

    op.create_table('calibration_selections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('frame_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('master_id', sa.Integer(), nullable=True),
    sa.Column('method', sa.String(length=20), nullable=False),
    sa.Column('scale', sa.Float(), nullable=True),
    sa.Column('rule_version', sa.String(length=50), nullable=False),
    sa.Column('decided_at', sa.DateTime(), nullable=False),
    sa.Column('candidates', sa.JSON(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.Column('reduction_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['frame_id'], ['frames.id'], name=op.f('fk_calibration_selections_frame_id_frames')),
    sa.ForeignKeyConstraint(['master_id'], ['frames.id'], name=op.f('fk_calibration_selections_master_id_frames')),
    sa.ForeignKeyConstraint(['reduction_id'], ['reductions.id'], name=op.f('fk_calibration_selections_reduction_id_reductions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_calibration_selections'))
    )
    with op.batch_alter_table('calibration_selections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_calibration_selections_frame_id'), ['frame_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_calibration_selections_master_id'), ['master_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_calibration_selections_reduction_id'), ['reduction_id'], unique=False)

    if op.get_bind().dialect.name == 'sqlite':
        op.execute(
            'ALTER TABLE frames ADD COLUMN reduction_id INTEGER '
            'CONSTRAINT fk_frames_reduction_id_reductions REFERENCES reductions (id)'
        )
    else:
        op.add_column('frames', sa.Column('reduction_id', sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f('fk_frames_reduction_id_reductions'), 'frames', 'reductions', ['reduction_id'], ['id']
        )
    op.create_index(op.f('ix_frames_reduction_id'), 'frames', ['reduction_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_frames_reduction_id'), table_name='frames')
    if op.get_bind().dialect.name == 'sqlite':
        # SQLite drops a column only when no constraint names it: copy the table without it.
        with op.batch_alter_table('frames', schema=None, recreate='always') as batch_op:
            batch_op.drop_column('reduction_id')
    else:
        op.drop_constraint(op.f('fk_frames_reduction_id_reductions'), 'frames', type_='foreignkey')
        op.drop_column('frames', 'reduction_id')

    with op.batch_alter_table('calibration_selections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_calibration_selections_reduction_id'))
        batch_op.drop_index(batch_op.f('ix_calibration_selections_master_id'))
        batch_op.drop_index(batch_op.f('ix_calibration_selections_frame_id'))
    op.drop_table('calibration_selections')
    with op.batch_alter_table('masters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_masters_kind'))
    op.drop_table('masters')
    with op.batch_alter_table('reduction_inputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reduction_inputs_frame_id'))
    op.drop_table('reduction_inputs')
    with op.batch_alter_table('reductions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reductions_step'))
        batch_op.drop_index(batch_op.f('ix_reductions_fingerprint'))
    op.drop_table('reductions')
