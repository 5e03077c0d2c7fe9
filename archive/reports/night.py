"""One observing night as data: what came in, the masters, quality against time, integration,
problems and thumbnails (issue 12). The night report (:mod:`archive.reports.night_html`) and
the web view render it; every table comes from the functions the command line uses:

* what came in: :func:`archive.reports.catalog.summarize` (raw frames of the night);
* masters chosen for the night's lights: the stored decisions (``calibration_selections``);
  lights left without a required calibration, with the reason:
  :func:`archive.calib.missing.missing_calibrations`, for the kinds
  :func:`archive.calib.required.required_kinds` asks of each instrument;
* quality: :func:`archive.reduce.quality_report.quality_rows` (``archive quality``'s table: measurements and verdicts);
* problems: :func:`archive.reports.catalog.list_problems` and
  :func:`archive.reports.reductions.list_reduction_problems`, of the night (``night=``);
* thumbnails: :func:`archive.reduce.preview.preview_png` (one auto-stretch).

The night is the local observing night of ``Frame.night`` (the date of the evening,
:func:`archive.ingest.timing.observing_night`).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from archive.calib.missing import missing_calibrations
from archive.calib.quality import QualityRules
from archive.calib.required import kinds_in_library, required_kinds
from archive.calib.rules import RuleBook, default_rulebook
from archive.calib.selection import rules_for
from archive.db.frames import FrameFilter, canonical_paths, frame_query, instrument_names
from archive.db.models import CALIBRATION_KINDS, DERIVED_TYPES, MASTER_TYPES, Frame
from archive.db.nights import derived_from_night, frames_by_id, frames_of_night, latest_selections, master_rows
from archive.errors import ArchiveError
from archive.reduce.integration import integrate
from archive.reduce.preview import preview_png
from archive.reduce.quality_report import quality_rows
from archive.reports.catalog import list_problems, select_frames, stack_exposure_s, summarize
from archive.reports.reductions import list_reduction_problems

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: The quality figures plotted against time, in this order (``frame_measurements`` columns).
QUALITY_METRICS = ("fwhm_px", "background_adu", "n_stars", "eccentricity")


class NightError(ValueError, ArchiveError):
    """A night that is not a date (YYYY-MM-DD)."""


def parse_night(text: str | dt.date) -> dt.date:
    """The night ``text`` names, as a date (``YYYY-MM-DD``, the evening's date).

    Raises
    ------
    NightError
        ``text`` is not a date in that form.
    """
    if isinstance(text, dt.date):
        return text
    try:
        return dt.date.fromisoformat(str(text).strip())
    except ValueError:
        raise NightError(f"{text!r} is not a night: give the evening's date as YYYY-MM-DD") from None


@dataclass
class Thumbnail:
    """An auto-stretched PNG of one frame, for a report.

    Attributes
    ----------
    frame_id : int
    kind : {'master', 'stack', 'light'}
    title : str
        What it shows, in a few words (``flat z``, ``XO1-b z 16 x 60 s``).
    path : str or None
        The frame's canonical copy.
    png : bytes or None
        The PNG (grey, or RGB for a colour stack: NAXIS3 = 3); None when the file could not
        be read (``error`` says why) or thumbnails were not asked for.
    colour : bool
        The frame is a colour cube (NAXIS3 = 3).
    error : str or None
    """

    frame_id: int
    kind: str
    title: str
    path: str | None
    png: bytes | None = None
    colour: bool = False
    error: str | None = None

    @property
    def data_uri(self) -> str | None:
        """The PNG as a ``data:image/png;base64,...`` URI (None without a PNG)."""
        if self.png is None:
            return None
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class NightReport:
    """One observing night, as :func:`night_summary` collects it (plain values and DataFrames).

    Attributes
    ----------
    night : date
        The local observing night (the evening's date).
    frames : DataFrame
        The night's raw frames (:func:`archive.reports.catalog.select_frames` columns: id,
        date_obs (UTC), image_type, target, filter_name, exposure_time_s, instrument, path, ...).
    counts : DataFrame
        What came in: raw frames by instrument, image_type, filter_name, exposure_time_s, with
        ``frames``, ``files``, ``exposure_h``, ``duplicates`` (:func:`~archive.reports.catalog.summarize`).
    masters_built : DataFrame
        Masters made from the night's raw calibrations: frame_id, kind, instrument,
        filter_name, exposure_time_s, n_combined, combine_method, is_bad, path.
    masters_chosen : DataFrame
        The masters the stored decisions chose for the night's lights: kind, master_id,
        method, lights (count), master_night, age_nights (night minus the master's night),
        path. The latest decision per light and kind counts.
    missing : DataFrame
        Lights left without a required calibration, grouped by what would be needed, with
        the reason (:func:`archive.calib.missing.missing_calibrations` columns).
    quality : DataFrame
        One row per light (:func:`archive.reduce.quality_report.quality_table` columns, ordered by
        date_obs): verdict, reasons, fwhm_px, background_adu, n_stars, eccentricity, ...
    integration : DataFrame
        Per target and filter: frames, accepted (not rejected), rejected, exposure_h,
        accepted_h, stacked (lights in the night's stacks).
    stacks : DataFrame
        Stacks made from the night's lights: frame_id, target, filter_name, exposure_time_s,
        n_combined, total_exposure_h, naxis3, path.
    ingest_problems : DataFrame
        Unresolved ingest problems of the runs that brought the night's frames in, and of the
        night's folders when given (:func:`archive.reports.catalog.list_problems` columns).
    reduction_problems : DataFrame
        Failed and rejected reductions of the night's frames and of the masters built from
        them (:func:`archive.reports.reductions.list_reduction_problems` columns).
    thumbnails : list of Thumbnail
        Masters, then stacks, then a few lights.
    """

    night: dt.date
    frames: pd.DataFrame
    counts: pd.DataFrame
    masters_built: pd.DataFrame
    masters_chosen: pd.DataFrame
    missing: pd.DataFrame
    quality: pd.DataFrame
    integration: pd.DataFrame
    stacks: pd.DataFrame
    ingest_problems: pd.DataFrame
    reduction_problems: pd.DataFrame
    thumbnails: list[Thumbnail] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """The catalogue holds no frame of this night."""
        return self.frames.empty

    @property
    def totals(self) -> dict[str, int]:
        """Raw frames of the night by image type (duplicate exposures counted once; a frame
        without an image type counts as ``unknown``)."""
        if self.counts.empty:
            return {}
        totals = self.counts.groupby("image_type", dropna=False)["frames"].sum()
        return {(str(k) if isinstance(k, str) else "unknown"): int(v) for k, v in totals.items()}


def _masters_built(session: Session, night: dt.date) -> pd.DataFrame:
    import pandas as pd

    masters = derived_from_night(session, night, MASTER_TYPES)
    rows = master_rows(session, [f.id for f in masters])
    names = instrument_names(session, [f.instrument_id for f in masters])
    paths = canonical_paths(session, [f.id for f in masters])
    columns = ["frame_id", "kind", "instrument", "filter_name", "exposure_time_s", "n_combined", "combine_method",
               "is_bad", "path"]
    return pd.DataFrame([
        (f.id, f.image_type.removeprefix("master_"), names.get(f.instrument_id), f.filter_name, f.exposure_time_s,
         rows[f.id].n_combined if f.id in rows else None, rows[f.id].combine_method if f.id in rows else None,
         bool(rows[f.id].is_bad) if f.id in rows else None, paths.get(f.id))
        for f in masters], columns=columns)


def _masters_chosen(session: Session, night: dt.date) -> pd.DataFrame:
    import pandas as pd

    # the night's lights but duplicate exposures, as a statement (no IN list of a thousand ids)
    lights = frame_query(FrameFilter(night=night, image_type="light", include_duplicates=False), Frame.id)
    groups: dict[tuple, int] = {}
    for sel in latest_selections(session, lights).values():
        key = (sel.kind, sel.master_id, sel.method)
        groups[key] = groups.get(key, 0) + 1
    master_ids = [k[1] for k in groups if k[1] is not None]
    nights = {i: f.night for i, f in frames_by_id(session, master_ids).items()}
    paths = canonical_paths(session, master_ids)
    rows = []
    for (kind, master_id, method), lights in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[1], kv[0][1] or 0)):
        master_night = nights.get(master_id)
        rows.append((kind, master_id, method, lights, master_night,
                     (night - master_night).days if master_night is not None else None, paths.get(master_id)))
    return pd.DataFrame(rows, columns=["kind", "master_id", "method", "lights", "master_night", "age_nights", "path"])


def _missing(session: Session, lights: list[Frame], rules: RuleBook) -> pd.DataFrame:
    """Lights without a master of a kind their instrument requires, per needed set."""
    names = instrument_names(session, [f.instrument_id for f in lights])
    per_instrument = {iid: rules_for(rules, names.get(iid)) for iid in {f.instrument_id for f in lights}}
    # the library's kinds only matter to instruments whose rules require what is available
    library = (kinds_in_library(session, instrument_ids=per_instrument)
               if any(r.required is None for r in per_instrument.values()) else {})
    needs = {light.id: required_kinds(per_instrument[light.instrument_id], light.instrument_id, library)
             for light in lights}
    needs = {fid: kinds for fid, kinds in needs.items() if kinds}
    kinds = [k for k in CALIBRATION_KINDS if any(k in ks for ks in needs.values())]
    # one pass over every light, each judged for the kinds its instrument requires
    return missing_calibrations(session, list(needs), kinds, rules=rules, needs=needs)


def _stacks(session: Session, night: dt.date) -> pd.DataFrame:
    import pandas as pd

    from archive import keywords as kw
    from archive.ingest.cards import CardIndex

    stacks = derived_from_night(session, night, ("stacked",))
    paths = canonical_paths(session, [f.id for f in stacks])
    rows = []
    for f in stacks:
        cards = CardIndex("".join(line[:80].ljust(80) for line in (f.header or "").split("\n")))
        count = cards.get(kw.NCOMBINE)
        total = stack_exposure_s(f.header, f.exposure_time_s)
        rows.append((f.id, f.target, f.filter_name, f.exposure_time_s, count if isinstance(count, int) else None,
                     None if total is None else total / 3600.0, f.naxis3, paths.get(f.id)))
    return pd.DataFrame(rows, columns=["frame_id", "target", "filter_name", "exposure_time_s", "n_combined",
                                       "total_exposure_h", "naxis3", "path"])


def _integration(verdict: dict[int, str], lights: list[Frame], stacks: pd.DataFrame) -> pd.DataFrame:
    """Per target and filter: the night's lights (duplicates counted once), accepted and rejected
    (:func:`archive.reduce.integration.integrate`), and how many went into the night's stacks."""
    import pandas as pd

    rejected = {fid for fid, v in verdict.items() if v == "rejected"}
    rows = integrate((f for f in lights if f.duplicate_of_id is None), rejected,
                     key=lambda light: (light.target or "", light.filter_name or ""))
    stacked: dict[tuple, int] = {}
    for stack in stacks.itertuples():
        key = (stack.target or "", stack.filter_name or "")
        if key in rows and stack.n_combined is not None and not pd.isna(stack.n_combined):
            stacked[key] = stacked.get(key, 0) + int(stack.n_combined)
    out = [(target, filter_name, r["frames"], r["accepted"], r["rejected"], r["exposure_s"] / 3600.0,
            r["accepted_s"] / 3600.0, stacked.get((target, filter_name), 0))
           for (target, filter_name), r in sorted(rows.items())]
    return pd.DataFrame(out, columns=["target", "filter_name", "frames", "accepted", "rejected", "exposure_h",
                                      "accepted_h", "stacked"])


def _thumbnail(frame: Frame, kind: str, title: str, path: str | None, size: int, render: bool) -> Thumbnail:
    thumb = Thumbnail(frame_id=frame.id, kind=kind, title=title, path=path, colour=frame.naxis3 == 3)
    if not render:
        return thumb
    if path is None:
        thumb.error = "no current copy on disk"
        return thumb
    try:
        thumb.png = preview_png(path, max_size=size, hdu=frame.hdu_index)
    except (OSError, ValueError, IndexError) as exc:
        thumb.error = f"{path}: {exc}"
        log.warning("no thumbnail of %s", thumb.error)
    return thumb


def _pick_lights(lights: list[Frame], count: int) -> list[Frame]:
    """Up to ``count`` lights spread over the night (first, last and between, by DATE-OBS)."""
    usable = [f for f in lights if f.duplicate_of_id is None]
    if len(usable) <= count:
        return usable
    step = (len(usable) - 1) / max(count - 1, 1)
    picked = {round(i * step) for i in range(count)}
    return [usable[i] for i in sorted(picked)]


def _text(value) -> str:
    """A table value as title text: '' for None and NaN."""
    import pandas as pd

    return "" if pd.isna(value) else str(value)


def _exposure_text(seconds: float | None) -> str:
    import pandas as pd

    return "" if pd.isna(seconds) else f"{seconds:g} s"


def night_summary(
    session: Session,
    night: dt.date | str,
    *,
    rules: RuleBook | None = None,
    quality_rules: QualityRules | None = None,
    thumbnails: bool = True,
    thumbnail_size: int = 320,
    lights_shown: int = 4,
    folders: Sequence[str | Path] = (),
) -> NightReport:
    """Collect everything known of one observing night (see :class:`NightReport`).

    Parameters
    ----------
    session : Session
    night : date or str
        The local observing night, the evening's date (``YYYY-MM-DD``).
    rules : RuleBook, optional
        The master library's matching rules (default :func:`archive.calib.rules.default_rulebook`).
    quality_rules : QualityRules, optional
        The quality rules the verdicts follow (default
        :func:`archive.calib.quality.load_quality_rules`).
    thumbnails : bool
        Read the images and make the thumbnails' PNGs (default True). Without, the
        :class:`Thumbnail` rows are listed with ``png = None`` (a web page can fetch them apart).
    thumbnail_size : int
        Largest side of a thumbnail, pixels (stacks get twice as many).
    lights_shown : int
        How many lights get a thumbnail, spread over the night.
    folders : sequence of str or Path
        The night's folders, when known (``archive night``): their unresolved ingest problems
        are the night's too, even from an ingest run that catalogued no frame of the night
        (a folder holding only unreadable files).

    Returns
    -------
    NightReport
        Empty tables (``report.empty``) when the catalogue holds no frame of the night.

    Raises
    ------
    NightError
        ``night`` is not a date.
    """
    import pandas as pd

    night = parse_night(night)
    rules = rules if rules is not None else default_rulebook()
    everything = select_frames(session, FrameFilter(night=night))
    frames = everything[~everything["image_type"].isin(DERIVED_TYPES)].reset_index(drop=True)
    counts = summarize(session, by=("instrument", "image_type", "filter_name", "exposure_time_s"),
                       filters=FrameFilter(night=night))
    paths = {i: p for i, p in zip(everything["id"], everything["path"]) if isinstance(p, str)}
    # the night's lights, read once: quality, integration, calibration and thumbnails use them
    lights = frames_of_night(session, night, "light")
    quality = quality_rows(session, lights, rules=quality_rules, paths=paths,
                           among=frame_query(FrameFilter(night=night, image_type="light"), Frame.id))
    if not quality.empty:
        quality = quality.sort_values(["date_obs", "frame_id"], kind="stable").reset_index(drop=True)
    stacks = _stacks(session, night)
    masters_built = _masters_built(session, night)

    # problems: of the ingest runs that brought the night in (and its folders); of its frames
    ingest_problems = list_problems(session, night=night, under=folders)
    reduction_problems = list_reduction_problems(session, night=night)

    verdict = dict(zip(quality["frame_id"], quality["verdict"])) if not quality.empty else {}
    thumbs: list[Thumbnail] = []
    by_id = frames_by_id(session, [*masters_built["frame_id"], *stacks["frame_id"]])
    built_paths = dict(zip(masters_built["frame_id"], masters_built["path"]))
    for row in masters_built.itertuples():
        title = " ".join(p for p in (row.kind, _text(row.filter_name) if row.kind == "flat" else "",
                                     _exposure_text(row.exposure_time_s) if row.kind == "dark" else "") if p)
        thumbs.append(_thumbnail(by_id[row.frame_id], "master", title, built_paths.get(row.frame_id),
                                 thumbnail_size, thumbnails))
    for row in stacks.itertuples():
        count = "" if row.n_combined is None or pd.isna(row.n_combined) else f"{int(row.n_combined)} x "
        title = f"{_text(row.target)} {_text(row.filter_name)} {count}{_exposure_text(row.exposure_time_s)}".strip()
        thumbs.append(_thumbnail(by_id[row.frame_id], "stack", title, row.path, 2 * thumbnail_size, thumbnails))
    for light in _pick_lights(lights, lights_shown):
        when = light.date_obs.strftime("%H:%M:%S UTC") if light.date_obs else ""
        title = f"{light.target or ''} {light.filter_name or ''} {when}".strip()
        if verdict.get(light.id) == "rejected":
            title += " (rejected)"
        thumbs.append(_thumbnail(light, "light", title, paths.get(light.id), thumbnail_size, thumbnails))

    return NightReport(
        night=night, frames=frames, counts=counts, masters_built=masters_built,
        masters_chosen=_masters_chosen(session, night),
        missing=_missing(session, [f for f in lights if f.duplicate_of_id is None], rules),
        quality=quality, integration=_integration(verdict, lights, stacks), stacks=stacks,
        ingest_problems=ingest_problems, reduction_problems=reduction_problems, thumbnails=thumbs,
    )
