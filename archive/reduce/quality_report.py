"""Frame quality, reporting: the tables of frames with their measurements and verdicts.

* :func:`quality_table` is ``archive quality`` as a DataFrame (:func:`quality_rows` for frames
  the caller has read: the night report);
* :func:`rejected_frames` lists the frames rejected by quality (``archive problems --quality``,
  the web view's problems page).

The verdicts are :func:`archive.reduce.quality.verdicts`; pandas is imported on use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from archive.calib.quality import QualityRules, load_quality_rules
from archive.db.nights import frames_by_id
from archive.db.frames import (
    FrameFilter,
    canonical_paths,
    frame_query,
    instrument_names,
)
from archive.db.models import Frame, FrameMeasurement, QualityFlag, QualityOverride
from archive.reduce.measure import measurement_version
from archive.reduce.quality import MEASURED_TYPES, current_measurements, verdicts

if TYPE_CHECKING:
    import pandas as pd


def quality_table(session: Session, filters: FrameFilter | None = None, *,
                  rules: QualityRules | None = None) -> pd.DataFrame:
    """``archive quality``: one row per frame with its current measurement, flags and
    verdict; rejected frames first (with their reasons), then by DATE-OBS.

    Frames of types never measured (calibrated, registered, stacked) are left out.
    """
    query = frame_query(filters, Frame).where(Frame.image_type.in_(MEASURED_TYPES))
    frames = list(session.scalars(query.order_by(Frame.date_obs_s, Frame.id)))
    return quality_rows(session, frames, rules=rules, among=query.with_only_columns(Frame.id))


def quality_rows(session: Session, frames: Sequence[Frame], *, rules: QualityRules | None = None,
                 among: Select | None = None, paths: Mapping[int, str] | None = None) -> pd.DataFrame:
    """:func:`quality_table` of frames the caller has already read.

    Parameters
    ----------
    frames : sequence of Frame
        Frames of the measured types, in the order wanted (rejected ones are moved first).
    among : Select, optional
        A statement selecting exactly the frames' ids (see :func:`~archive.reduce.quality.verdicts`).
    paths : mapping, optional
        frame id -> its canonical path, when the caller has them (default: looked up).
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    measured = current_measurements(session, [f.id for f in frames], version, among=among)
    states = verdicts(session, [f.id for f in frames], rules=rules, among=among)
    if paths is None:
        paths = canonical_paths(session, [f.id for f in frames])
    shown = ("background_adu", "noise_adu", "n_stars", "fwhm_px", "fwhm_arcsec", "eccentricity",
             "saturated_fraction", "weight", "read_noise_adu", "dark_current_adu_s", "hot_pixels", "flat_snr",
             "flat_falloff", "changed_fraction")
    rows = []
    for f in frames:
        m = measured.get(f.id)
        state = states[f.id]
        row: dict[str, Any] = {
            "frame_id": f.id, "verdict": state["verdict"], "by": state["by"], "reasons": "; ".join(state["reasons"]),
            "flags": "; ".join(state["flags"]), "image_type": f.image_type, "night": f.night, "target": f.target,
            "filter": f.filter_name, "date_obs": f.date_obs,
            "measured": (m.status if m is not None else None),
        }
        for column in shown:
            value = getattr(m, column) if m is not None else None
            row[column] = round(value, 4) if isinstance(value, float) else value
        row["path"] = paths.get(f.id)
        rows.append(row)
    columns = ["frame_id", "verdict", "by", "reasons", "flags", "image_type", "night", "target", "filter", "date_obs",
               "measured", *shown, "path"]
    import pandas as pd  # on use: 0.2 s of every measuring command's start otherwise

    table = pd.DataFrame(rows, columns=columns)
    for column in ("n_stars", "hot_pixels"):
        table[column] = table[column].astype("Int64")
    if not table.empty:
        table = table.assign(_order=(table["verdict"] != "rejected")).sort_values("_order", kind="stable")
        table = table.drop(columns="_order").reset_index(drop=True)
    return table


def rejected_frames(session: Session, *, rules: QualityRules | None = None, night: dt.date | None = None,
                    limit: int | None = None) -> pd.DataFrame:
    """The frames rejected by quality (their :func:`~archive.reduce.quality.verdicts`: a
    person's reject, else a flag of the current rules with action ``reject``), newest first:
    what ``archive problems --quality`` and the web view's problems page list.

    Only frames that can be rejected are judged: those with an override, a stored reject flag
    of the current measurement version, or a measurement of that version not yet judged under
    the current rules (judged here, as :func:`~archive.reduce.quality.verdicts` does).

    Parameters
    ----------
    rules : QualityRules, optional
    night : date, optional
        Only frames of this local observing night.
    limit : int, optional
        The newest ``limit`` (by DATE-OBS; default all).

    Returns
    -------
    DataFrame
        Columns: frame_id, night, date_obs, image_type, instrument, target, filter, by
        (``rules`` or ``override``), reasons, path.
    """
    rules = rules or load_quality_rules()
    version = measurement_version(rules.measure.get("version", "1"))
    flagged = (select(QualityFlag.frame_id).join(FrameMeasurement, FrameMeasurement.id == QualityFlag.measurement_id)
               .where(QualityFlag.action == "reject", FrameMeasurement.version == version))
    unjudged = select(FrameMeasurement.frame_id).where(
        FrameMeasurement.version == version, FrameMeasurement.status == "ok",
        or_(FrameMeasurement.judged_version.is_(None), FrameMeasurement.judged_version != rules.version))
    overridden = select(QualityOverride.frame_id)
    query = select(Frame.id).where(or_(Frame.id.in_(flagged), Frame.id.in_(unjudged), Frame.id.in_(overridden)))
    if night is not None:
        query = query.where(Frame.night == night)
    candidates = list(session.scalars(query))
    states = verdicts(session, candidates, rules=rules, among=query)
    rejected = [i for i in candidates if states[i]["verdict"] == "rejected"]
    frames = sorted(frames_by_id(session, rejected).values(),
                    key=lambda f: (f.date_obs is not None, f.date_obs or dt.datetime.min, f.id), reverse=True)
    if limit is not None:
        frames = frames[:limit]
    names = {i: str(n) for i, n in instrument_names(session, [f.instrument_id for f in frames]).items()}
    paths = canonical_paths(session, [f.id for f in frames])
    rows = [(f.id, f.night, f.date_obs, f.image_type, names.get(f.instrument_id), f.target, f.filter_name,
             states[f.id]["by"], "; ".join(states[f.id]["reasons"]), paths.get(f.id)) for f in frames]
    import pandas as pd

    return pd.DataFrame(rows, columns=["frame_id", "night", "date_obs", "image_type", "instrument", "target", "filter",
                                       "by", "reasons", "path"])
