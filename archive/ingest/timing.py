"""Exposure time stamps, their integer twins (time since 1970) and the observing night.

These rules are written down here once:

* ``date_obs`` is the UTC start of the exposure, parsed with astropy from the first time
  keyword the dialect names (ISO 8601, the old FITS 'dd/mm/yy' form, a date plus a separate
  time of day, or an MJD), converted from the header's time scale (TIMESYS) to UTC.
* ``night`` is the local observing night: the calendar date of the local mean time of the
  exposure minus 12 h, local mean time being UTC + longitude / 15 deg per hour (east
  positive). A whole night, evening to morning, thus carries the date of its evening, like
  Rubin's DAY-OBS; with no longitude known the night is taken in UTC.
"""

from __future__ import annotations

import datetime as dt
import re

from archive.errors import HeaderError

_OLD_DATE = re.compile(r"^\s*(\d{2})/(\d{2})/(\d{2})\s*$")
_EPOCH = dt.datetime(1970, 1, 1)
_MICROSECOND = dt.timedelta(microseconds=1)
_SCALES = {"utc": "utc", "ut": "utc", "gmt": "utc", "tt": "tt", "tai": "tai", "tdb": "tdb",
           "tcg": "tcg", "tcb": "tcb", "ut1": "ut1", "gps": "tai"}


def parse_datetime(value: str, *, scale: str = "utc") -> tuple[dt.datetime, bool]:
    """Parse a FITS date or date-time string into a naive UTC datetime.

    Parameters
    ----------
    value : str
        ISO 8601 (``2025-06-02T03:21:41.04``, ``2019-04-30``) or the pre-2000 FITS form
        ``dd/mm/yy``, read as 19yy as the FITS standard 4.0, sec. 4.4.2.2, prescribes.
    scale : str
        Time scale of the value (FITS TIMESYS, lower case); converted to UTC.

    Returns
    -------
    (datetime, has_time)
        The UTC instant and whether the string carried a time of day.

    Raises
    ------
    HeaderError
        The string is not a date in any of these forms.
    """
    old = _OLD_DATE.match(value)
    if old:
        day, month, year = (int(g) for g in old.groups())
        try:
            return dt.datetime(1900 + year, month, day), False
        except ValueError as exc:
            raise HeaderError(f"not a dd/mm/yy date: {value!r}") from exc
    text = value.strip()
    has_time = len(text) > 10  # more than YYYY-MM-DD: a time of day, after "T" or a blank
    try:
        if scale == "utc":  # the common case: the standard library parses ISO 8601 quickly
            stamp = dt.datetime.fromisoformat(text)
            return (stamp.astimezone(dt.UTC).replace(tzinfo=None) if stamp.tzinfo else stamp), has_time
        from astropy.time import Time  # imported on first use: a slow import

        return Time(text, format="isot" if has_time else "iso", scale=scale).utc.to_datetime(), has_time
    except (ValueError, ArithmeticError) as exc:
        raise HeaderError(f"not an ISO 8601 date: {value!r}") from exc


def from_mjd(mjd: float, *, scale: str = "utc") -> dt.datetime:
    """Naive UTC datetime of a Modified Julian Date in time scale ``scale``."""
    from astropy.time import Time  # imported on first use: a slow import

    return Time(float(mjd), format="mjd", scale=scale).utc.to_datetime()


def time_scale(value: object) -> str:
    """Map a TIMESYS value to an astropy time scale; UTC when absent or unknown."""
    return _SCALES.get(str(value or "utc").strip().lower(), "utc")


def epoch_microseconds(stamp: dt.datetime | None) -> int | None:
    """Microseconds since 1970-01-01 UTC of a naive UTC datetime, exactly (None for None).

    The integer twin of a time stamp: exact and portable comparisons and orderings in SQL on
    every backend.
    """
    if stamp is None:
        return None
    return (stamp - _EPOCH) // _MICROSECOND


def epoch_seconds(stamp: dt.datetime) -> int:
    """Whole seconds since 1970-01-01 UTC of a naive UTC datetime (floor): ``frames.date_obs_s``."""
    return epoch_microseconds(stamp) // 1_000_000


def from_epoch_seconds(seconds: float) -> dt.datetime:
    """The naive UTC datetime ``seconds`` (s, fractions kept to the microsecond) after 1970-01-01 UTC."""
    return _EPOCH + dt.timedelta(seconds=seconds)


def observing_night(date_obs: dt.datetime, longitude_deg: float | None) -> dt.date:
    """The local observing night of an exposure (rule in the module docstring).

    Parameters
    ----------
    date_obs : datetime
        Exposure start, naive UTC.
    longitude_deg : float or None
        Site longitude in degrees, east positive; None for UTC.

    Returns
    -------
    date
        The date of the evening on which the night began.
    """
    offset = dt.timedelta(hours=(longitude_deg or 0.0) / 15.0 - 12.0)
    return (date_obs + offset).date()
