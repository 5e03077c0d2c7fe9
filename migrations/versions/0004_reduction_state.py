"""reduction state as columns: the claim, the failure kind, the registration group, results;
a unique fingerprint

Before, a reduction's state was kept as text and as outcomes written into its fingerprinted
``parameters``. This revision gives each its column on ``reductions`` and carries today's rows
over:

- ``claim_host``, ``claim_pid``, ``claimed_at``: who works on a ``running`` row. Parsed out of
  ``message`` ("claimed by HOST pid PID"), which becomes NULL; ``claimed_at`` is the row's
  ``started_at`` (the claim was written when it started). A running row without such a message
  (interrupted before claims were written) keeps NULL: free for the next run.
- ``failure_kind``: ``parameters['failure']`` (``'alignment'``) moves here; any other
  ``failed`` row gets ``'error'`` (every other failure was tried again, as ``'error'`` is now).
- ``group_key`` (indexed: the pipeline looks registrations up by it): for ``register`` rows,
  ``parameters['group']``, the registration group the frame was registered in or adopted into.
  It is state, not a request: it is not fingerprinted and changes when a group's membership
  changes. (A master's ``parameters['group']`` is its grouping key, which *is* fingerprinted;
  it stays a parameter.)
- ``results`` (JSON): for ``register`` rows, what came out of the step, moved out of
  ``parameters``: ``n_stars``, ``reference_stars`` (star counts, not fingerprinted) and ``dx``,
  ``dy`` (px), ``rotation_deg``, ``scale``. What is left in ``parameters`` is what was asked.
- ``fingerprint`` becomes unique (a unique index, ``ix_reductions_fingerprint``, so that SQLite
  needs no copy of a table that ``frames``, ``reduction_inputs`` and ``calibration_selections``
  reference; both backends' ``ON CONFLICT DO NOTHING`` use it). Rows that share a fingerprint
  are merged first, by this rule:

  * the row kept is the newest (highest id) ``done`` one, else the newest;
  * frames produced by a dropped row (``frames.reduction_id``) point to the kept row, so no
    product loses its provenance;
  * the inputs of a dropped row (``reduction_inputs``) that the kept row lacks are added to it
    (one fingerprint means the same input files, so this is usually nothing); the dropped
    rows' inputs are deleted;
  * master selections (``calibration_selections``): the kept row keeps its own; if it has none,
    it takes those of the newest dropped row that has some; the other dropped rows' selections
    are deleted (they repeat one decision);
  * the dropped rows are deleted.

Downgrade puts the outcomes back into ``parameters`` (``failure`` for alignment failures,
``group``, the results) and the claims of running rows back into ``message``, then drops the
columns and makes the fingerprint index non-unique again. Merged duplicates stay merged.

On SQLite, columns are added and dropped in place (``ALTER TABLE ... ADD/DROP COLUMN``, batch
mode with ``recreate='never'``): a batch copy of ``reductions`` would drop a table that other
tables reference, which fails on a populated catalogue with foreign keys on.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


#: What a registration wrote into its parameters that came out of the step.
REGISTER_RESULTS = ('n_stars', 'reference_stars', 'dx', 'dy', 'rotation_deg', 'scale')

reductions = sa.table(
    'reductions',
    sa.column('id', sa.Integer), sa.column('step', sa.String), sa.column('fingerprint', sa.String),
    sa.column('parameters', sa.JSON), sa.column('status', sa.String), sa.column('message', sa.Text),
    sa.column('started_at', sa.DateTime), sa.column('claim_host', sa.String), sa.column('claim_pid', sa.Integer),
    sa.column('claimed_at', sa.DateTime), sa.column('failure_kind', sa.String), sa.column('group_key', sa.String),
    sa.column('results', sa.JSON),
)
frames = sa.table('frames', sa.column('id', sa.Integer), sa.column('reduction_id', sa.Integer))
inputs = sa.table('reduction_inputs', sa.column('reduction_id', sa.Integer), sa.column('frame_id', sa.Integer),
                  sa.column('role', sa.String))
selections = sa.table('calibration_selections', sa.column('id', sa.Integer), sa.column('reduction_id', sa.Integer))


def _parse_claim(message):
    """(host, pid) of a message "claimed by HOST pid PID", else None."""
    parts = (message or '').split()
    if len(parts) == 5 and parts[:2] == ['claimed', 'by'] and parts[3] == 'pid' and parts[4].isdigit():
        return parts[2], int(parts[4])
    return None


def _carry_rows_over(conn) -> None:
    rows = conn.execute(sa.select(reductions.c.id, reductions.c.step, reductions.c.parameters, reductions.c.status,
                                  reductions.c.message, reductions.c.started_at)).all()
    for rid, step, parameters, status, message, started_at in rows:
        params = dict(parameters or {})
        values = {}
        claim = _parse_claim(message) if status == 'running' else None
        if claim is not None:
            values.update(claim_host=claim[0], claim_pid=claim[1], claimed_at=started_at, message=None)
        failure = params.pop('failure', None)
        if status == 'failed':
            values['failure_kind'] = failure or 'error'
        if step == 'register':
            group = params.pop('group', None)
            if group is not None:
                values['group_key'] = str(group)
            results = {key: params.pop(key) for key in REGISTER_RESULTS if key in params}
            if results:
                values['results'] = results
        if params != (parameters or {}):
            values['parameters'] = params
        if values:
            conn.execute(sa.update(reductions).where(reductions.c.id == rid).values(**values))


def _merge_duplicates(conn) -> None:
    shared = [fp for (fp,) in conn.execute(
        sa.select(reductions.c.fingerprint).group_by(reductions.c.fingerprint).having(sa.func.count() > 1))]
    for fp in shared:
        rows = conn.execute(sa.select(reductions.c.id, reductions.c.status)
                            .where(reductions.c.fingerprint == fp).order_by(reductions.c.id)).all()
        done = [rid for rid, status in rows if status == 'done']
        keep = done[-1] if done else rows[-1][0]
        dropped = [rid for rid, _ in rows if rid != keep]
        conn.execute(sa.update(frames).where(frames.c.reduction_id.in_(dropped)).values(reduction_id=keep))
        have = set(conn.execute(sa.select(inputs.c.frame_id, inputs.c.role).where(inputs.c.reduction_id == keep)))
        extra = set(conn.execute(sa.select(inputs.c.frame_id, inputs.c.role)
                                 .where(inputs.c.reduction_id.in_(dropped)))) - have
        conn.execute(sa.delete(inputs).where(inputs.c.reduction_id.in_(dropped)))
        if extra:
            conn.execute(sa.insert(inputs), [{'reduction_id': keep, 'frame_id': f, 'role': r} for f, r in sorted(extra)])
        kept_has = conn.scalar(sa.select(sa.func.count()).select_from(selections)
                               .where(selections.c.reduction_id == keep))
        if not kept_has:
            donor = conn.scalar(sa.select(sa.func.max(selections.c.reduction_id))
                                .where(selections.c.reduction_id.in_(dropped)))
            if donor is not None:
                conn.execute(sa.update(selections).where(selections.c.reduction_id == donor).values(reduction_id=keep))
        conn.execute(sa.delete(selections).where(selections.c.reduction_id.in_(dropped)))
        conn.execute(sa.delete(reductions).where(reductions.c.id.in_(dropped)))


def upgrade() -> None:
    with op.batch_alter_table('reductions', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('claim_host', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('claim_pid', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('failure_kind', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('group_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('results', sa.JSON(), nullable=True))
    conn = op.get_bind()
    _carry_rows_over(conn)
    _merge_duplicates(conn)
    with op.batch_alter_table('reductions', schema=None, recreate='never') as batch_op:
        batch_op.create_index(batch_op.f('ix_reductions_group_key'), ['group_key'], unique=False)
        batch_op.drop_index(batch_op.f('ix_reductions_fingerprint'))
        batch_op.create_index(batch_op.f('ix_reductions_fingerprint'), ['fingerprint'], unique=True)


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(
        reductions.c.id, reductions.c.step, reductions.c.parameters, reductions.c.status, reductions.c.message,
        reductions.c.claim_host, reductions.c.claim_pid, reductions.c.failure_kind, reductions.c.group_key,
        reductions.c.results)).all()
    for rid, step, parameters, status, message, host, pid, failure, group, results in rows:
        params = {**(parameters or {}), **(results or {})}
        if group is not None:
            params['group'] = group
        if failure == 'alignment':
            params['failure'] = failure
        values = {'parameters': params} if params != (parameters or {}) else {}
        if status == 'running' and host is not None:
            values['message'] = f'claimed by {host} pid {pid}'
        if values:
            conn.execute(sa.update(reductions).where(reductions.c.id == rid).values(**values))
    with op.batch_alter_table('reductions', schema=None, recreate='never') as batch_op:
        batch_op.drop_index(batch_op.f('ix_reductions_fingerprint'))
        batch_op.create_index(batch_op.f('ix_reductions_fingerprint'), ['fingerprint'], unique=False)
        batch_op.drop_index(batch_op.f('ix_reductions_group_key'))
        batch_op.drop_column('results')
        batch_op.drop_column('group_key')
        batch_op.drop_column('failure_kind')
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('claim_pid')
        batch_op.drop_column('claim_host')
