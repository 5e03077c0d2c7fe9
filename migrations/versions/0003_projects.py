"""projects: multi-night projects and their per-filter integration goals

Adds ``projects`` (name, target, filters, DATE-OBS range, optional reference position and
radius, folder, creation and last collection times) and ``project_goals`` (integration wanted
per filter, s). Which frames belong to a project is computed from the catalogue, so no
membership table is needed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('projects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('filters', sa.JSON(), nullable=False),
    sa.Column('since', sa.DateTime(), nullable=True),
    sa.Column('until', sa.DateTime(), nullable=True),
    sa.Column('ra_deg', sa.Float(), nullable=True),
    sa.Column('dec_deg', sa.Float(), nullable=True),
    sa.Column('radius_arcmin', sa.Float(), nullable=True),
    sa.Column('folder', sa.String(length=4096), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('collected_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects')),
    sa.UniqueConstraint('name', name=op.f('uq_projects_name'))
    )
    op.create_table('project_goals',
    sa.Column('project_id', sa.Integer(), nullable=False),
    sa.Column('filter_name', sa.String(length=100), nullable=False),
    sa.Column('goal_s', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_project_goals_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('project_id', 'filter_name', name=op.f('pk_project_goals'))
    )


def downgrade() -> None:
    op.drop_table('project_goals')
    op.drop_table('projects')
