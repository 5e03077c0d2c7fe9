"""archive: a database-backed archive and catalogue of astronomical FITS frames.

The catalogue (SQLite by default, PostgreSQL when shared) holds every raw and derived frame
with its whole header and normalized metadata; see ``archive.ingest`` for getting frames in
and ``archive.reports`` for getting tables out.
"""



def __getattr__(name: str) -> str:
    """``archive.__version__``, read from the installed package metadata on first use (importing
    :mod:`importlib.metadata` at start-up would slow every command)."""
    if name != "__version__":
        raise AttributeError(f"module 'archive' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("archive")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
