"""``archive prune`` after a real night (the ARCSAT night of tests/test_night.py, run once per
backend): the sizes listed are the files' sizes; after pruning, provenance still reads,
``archive reduce`` remakes a pruned calibrated frame with the same pixels, raw frames are
untouched, and a product edited after it was recorded is refused. Both backends.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np
from astropy.io import fits
from sqlalchemy import select

from archive.cli import main
from archive.db.models import Copy, Frame, Reduction
from archive.db.provenance import provenance_tree
from archive.db.session import session_scope
from archive.files import sha256_file
from tests.test_night import night  # noqa: F401 - the module-scoped night, run once per backend


def _cli(night, *args):  # noqa: F811
    return night["runner"].invoke(main, ["--db", night["url"], *map(str, args)], env=night["env"],
                                  catch_exceptions=False)


def _current(session, image_type):
    return dict(session.execute(select(Copy.path, Copy.frame_id).join(Frame, Frame.id == Copy.frame_id)
                                .where(Frame.image_type == image_type, Copy.is_current)).all())


def test_prune_lists_deletes_refuses_an_edited_file_and_reduce_remakes(night):  # noqa: F811
    assert night["result"].exit_code == 0, night["result"].output
    output = night["base"] / "reduced"
    raw_files = sorted(p for p in night["root"].rglob("*.fits"))
    raw_before = {p: sha256_file(p) for p in raw_files}
    with session_scope(night["engine"]) as session:
        calibrated, registered = _current(session, "calibrated"), _current(session, "registered")
        keep = {**_current(session, "stacked"), **_current(session, "master_bias"),
                **_current(session, "master_dark"), **_current(session, "master_flat")}
    assert len(calibrated) == 17 and len(registered) == 17 and len(keep) == 4
    # 1. the listing: calibrated and registered frames, with their sizes on disk
    listed = _cli(night, "prune", "--dry-run", "--format", "csv", "--output", output)
    assert listed.exit_code == 0, listed.output
    rows = list(csv.DictReader(io.StringIO(listed.stdout)))
    assert {r["path"] for r in rows} == set(calibrated) | set(registered)
    total = sum(os.path.getsize(p) for p in list(calibrated) + list(registered))
    assert sum(int(r["size_bytes"]) for r in rows) == total
    assert "would delete 34 file(s)" in listed.stderr and f"({total} bytes)" in listed.stderr
    assert all(os.path.exists(p) for p in list(calibrated) + list(registered))  # a dry run deletes nothing
    # masters and stacks only when named; raw frames never
    named = _cli(night, "prune", "--dry-run", "--format", "csv", "--kind", "master_dark", "--kind", "stacked",
                 "--output", output)
    assert {r["image_type"] for r in csv.DictReader(io.StringIO(named.stdout))} == {"master_dark", "stacked"}
    assert _cli(night, "prune", "--kind", "light", "--dry-run").exit_code == 2
    # 2. one calibrated frame is read before pruning, another is edited after it was recorded
    paths = sorted(calibrated)
    original_path, edited_path = paths[3], paths[5]
    original = fits.getdata(original_path).astype(np.float64)
    with open(edited_path, "r+b") as fh:  # same size, other bytes
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\x01" * 8)
    without_yes = night["runner"].invoke(main, ["--db", night["url"], "prune", "--output", str(output)],
                                         env=night["env"], input="n\n")
    assert without_yes.exit_code == 1 and os.path.exists(original_path)  # declined: nothing deleted
    pruned = _cli(night, "prune", "--yes", "--output", output)
    assert pruned.exit_code == 1, pruned.output  # one refused
    assert f"refused {edited_path}: its bytes changed since it was catalogued" in pruned.stderr
    assert "pruned 33 file(s)" in pruned.stdout
    assert os.path.exists(edited_path)
    assert not any(os.path.exists(p) for p in list(calibrated) + list(registered) if p != edited_path)
    assert all(os.path.exists(p) for p in keep) and not list(output.rglob(".*.part"))
    assert {p: sha256_file(p) for p in raw_files} == raw_before  # raw frames untouched
    # 3. the catalogue keeps the rows; provenance still reads
    with session_scope(night["engine"]) as session:
        frame_id = calibrated[original_path]
        copy = session.scalars(select(Copy).where(Copy.frame_id == frame_id)).one()
        assert copy.pruned_at is not None and not copy.is_current
        stack = session.scalars(select(Frame).where(Frame.image_type == "stacked")).one()
        tree = provenance_tree(session, stack)
        assert len(tree["inputs"]) == 16 and all(node.get("pruned") for node in tree["inputs"])
        calibrate_id = session.get(Frame, frame_id).reduction_id
    assert _cli(night, "provenance", original_path).exit_code == 0
    shown = _cli(night, "show", frame_id)
    assert shown.exit_code == 0 and "      pruned 20" in shown.output
    stack_path = next(p for p, i in keep.items() if i == stack.id)
    tree_out = _cli(night, "provenance", "--tree", stack_path)
    assert tree_out.exit_code == 0 and "[raw] bias" in tree_out.output
    # 4. archive reduce remakes the pruned products: the same pixels, the same provenance row
    remade = _cli(night, "-q", "reduce", "--night", "2025-06-01", "--workers", "2", "--output", output)
    assert remade.exit_code == 0, remade.output
    assert "16 calibrated" in remade.output and "17 registered" in remade.output  # the edited one is not pruned
    # (NaN where the bad-pixel mask is, in both)
    assert np.array_equal(fits.getdata(original_path).astype(np.float64), original, equal_nan=True)
    with session_scope(night["engine"]) as session:
        assert _current(session, "calibrated")[original_path] == frame_id  # same bytes, same frame
        reduction = session.get(Reduction, calibrate_id)
        assert reduction.status == "done" and session.get(Frame, frame_id).reduction_id == calibrate_id
        assert set(_current(session, "registered")) == set(registered)
    assert _cli(night, "prune", "--dry-run", "--output", output).exit_code == 0


def test_a_master_pruned_when_named_is_rebuilt_by_masters_build(night):  # noqa: F811
    """Runs after the test above (same night): masters only go when named, and come back."""
    with session_scope(night["engine"]) as session:
        flats = _current(session, "master_flat")
    (path, frame_id), = flats.items()
    data = fits.getdata(path)
    pruned = _cli(night, "prune", "--kind", "master_flat", "--yes", "--output", night["base"] / "reduced")
    assert pruned.exit_code == 0 and "pruned 1 file(s)" in pruned.stdout, pruned.output
    assert not os.path.exists(path)
    built = _cli(night, "masters", "build", "--night", "2025-06-01")
    assert built.exit_code == 0, built.output
    assert np.array_equal(fits.getdata(path), data)
    with session_scope(night["engine"]) as session:
        assert _current(session, "master_flat") == {path: frame_id}
