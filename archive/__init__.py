"""archive: a database-backed archive and catalogue of astronomical FITS frames.

The catalogue (SQLite by default, PostgreSQL when shared) holds every raw and derived frame
with its whole header and normalized metadata; see ``archive.ingest`` for getting frames in
and ``archive.reports`` for getting tables out.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("archive")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
