"""units and lineage: ``instruments.model`` and ``serial``; ``frames.superseded_by_id``;
``reductions.lineage`` (issue 10, parts 7 and 8)

* An instrument is one unit: its model (INSTRUME) and, where the capture program writes one,
  its serial (configs/dialects ``serial``: TELESCOP of a Seestar). ``name`` stays the identity
  and the display name ("Seestar S50 S50_1d3fe189"); ``model`` is filled from ``name`` for
  the rows of earlier catalogues (their frames were catalogued without serials: ingesting
  them again does not split them, a new frame of a unit makes the unit's own row).
* A product remade since (a light calibrated again with other masters, and what was made
  from it) points to the frame that replaced it (``frames.superseded_by_id``); the current
  product of each lineage (``reductions.lineage``: ``calibrate:<light id>``,
  ``register:<light id>``, ``stack:<hash of the group>``) has NULL. Rows of earlier
  catalogues have no lineage: every product reads as current until it is made again.

Columns are added in place on SQLite (``frames`` is referenced by most tables; SQLite accepts
``ADD COLUMN ... REFERENCES`` with a NULL default, which alembic does not write); the
downgrade copies ``frames`` there (batch mode) to drop the referencing column.

Revision ID: 0012_units
Revises: 0011_prune
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_units"
down_revision = "0011_prune"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instruments", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("serial", sa.String(length=100), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_instruments_model"), ["model"], unique=False
        )
    op.execute("UPDATE instruments SET model = name")
    if (
        op.get_bind().dialect.name == "sqlite"
    ):  # alembic cannot ALTER constraints there; SQLite can add one inline
        op.execute(
            "ALTER TABLE frames ADD COLUMN superseded_by_id INTEGER REFERENCES frames (id)"
        )
    else:
        op.add_column(
            "frames",
            sa.Column(
                "superseded_by_id",
                sa.Integer(),
                sa.ForeignKey("frames.id"),
                nullable=True,
            ),
        )
    op.create_index(
        op.f("ix_frames_superseded_by_id"), "frames", ["superseded_by_id"], unique=False
    )
    with op.batch_alter_table("reductions", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("lineage", sa.String(length=80), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_reductions_lineage"), ["lineage"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("reductions", schema=None, recreate="never") as batch_op:
        batch_op.drop_index(batch_op.f("ix_reductions_lineage"))
        batch_op.drop_column("lineage")
    op.drop_index(op.f("ix_frames_superseded_by_id"), table_name="frames")
    with op.batch_alter_table(
        "frames", schema=None
    ) as batch_op:  # SQLite: copied (the reference goes with it)
        batch_op.drop_column("superseded_by_id")
    with op.batch_alter_table("instruments", schema=None, recreate="never") as batch_op:
        batch_op.drop_index(batch_op.f("ix_instruments_model"))
        batch_op.drop_column("serial")
        batch_op.drop_column("model")
