"""Where the project's data folders are: ``configs/``, ``queries/`` and ``migrations/``.

In a source checkout (and an editable install) they sit at the top of the repository; an
installed wheel carries them as ``archive/_bundled/<name>`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """Return the folder holding the bundled resource ``name``.

    Parameters
    ----------
    name : {'configs', 'queries', 'migrations'}
        The top-level folder of the repository.

    Raises
    ------
    FileNotFoundError
        Neither the source-tree folder nor the bundled copy exists.
    """
    for candidate in (_PACKAGE.parent / name, _PACKAGE / "_bundled" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the archive package has no {name}/ folder (looked beside {_PACKAGE})")
