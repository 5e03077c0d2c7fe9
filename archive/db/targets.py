"""Target names across catalogues: "M 94", "M94", "NGC 4736" and "NGC4736" are one target.

Names are resolved offline with OpenNGC (Mattia Verga's catalogue of the NGC, IC and
Messier objects, CC-BY-SA 4.0), shipped as a SQLite file in the ``pyongc`` package. A name
OpenNGC does not know (a star, a comet, "Seestar") is its own only alias. Every alias is
folded by :func:`archive.db.frames.target_key` before it is compared with the catalogue.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: A catalogue prefix and a number ("M094", "NGC4736", "IC0434"), for the spellings without zeros.
_DESIGNATION = re.compile(r"^([a-z]+)0*(\d+)(.*)$")


@dataclass(frozen=True)
class Target:
    """A resolved target.

    Attributes
    ----------
    name : str
        OpenNGC's main name (``NGC4736``), or the name as given when OpenNGC does not know it.
    ra_deg, dec_deg : float or None
        Position (J2000, deg) when known.
    aliases : tuple of str
        Every name of the object (main name, Messier number, other identifiers), each also
        without the leading zeros of its number ("M094" and "M94").
    """

    name: str
    ra_deg: float | None
    dec_deg: float | None
    aliases: tuple[str, ...]


def _spellings(name: str) -> list[str]:
    folded = re.sub(r"[^a-z0-9]+", "", name.lower())
    match = _DESIGNATION.match(folded)
    out = [name]
    if match:
        out.append(f"{match.group(1)}{match.group(2)}{match.group(3)}")
    return out


@functools.lru_cache(maxsize=1024)
def resolve_target(name: str) -> Target:
    """Resolve a target name with OpenNGC.

    Parameters
    ----------
    name : str
        Any spelling OpenNGC knows ("M 94", "m94", "NGC 4736", "NGC4736", "IC 434"), or any
        other name.

    Returns
    -------
    Target
        With the position and every alias when OpenNGC knows the name, else the name alone
        (no position).
    """
    try:
        from pyongc import ongc
        from pyongc.exceptions import ObjectNotFound, UnknownIdentifier
    except ImportError:  # pragma: no cover - a dependency; names then match as spelt
        log.warning("pyongc is not installed: target names are not resolved")
        return Target(name, None, None, tuple(_spellings(name)))
    try:
        dso = ongc.Dso(name.strip())
    except (UnknownIdentifier, ObjectNotFound, ValueError):
        return Target(name, None, None, tuple(_spellings(name)))
    names = [dso.name]
    messier, ngc, ic, common, other = dso.identifiers
    if messier:
        names.append(messier)
    names += list(ngc or []) + list(ic or []) + list(common or []) + list(other or [])
    aliases: list[str] = [name]
    for alias in names:
        aliases += _spellings(alias)
    try:
        ra_rad, dec_rad = (float(v) for v in dso.rad_coords)
        ra, dec = math.degrees(ra_rad), math.degrees(dec_rad)
    except (TypeError, ValueError):  # objects without a position in OpenNGC
        ra = dec = None
    return Target(dso.name, ra, dec, tuple(dict.fromkeys(aliases)))
