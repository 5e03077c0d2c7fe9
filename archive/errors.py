"""Errors a user can act on.

Every error meant for a user derives from :class:`ArchiveError` and mixes in the built-in it
resembles, so library callers can catch either. The CLI prints these as one line and exits
non-zero, without a traceback.
"""


class ArchiveError(Exception):
    """Base class of every error that is the user's to fix (bad input, bad configuration)."""


class ConfigError(ValueError, ArchiveError):
    """A configuration file or setting is missing, unreadable or invalid."""


class HeaderError(ValueError, ArchiveError):
    """A FITS file could not be read or its header could not be parsed."""


class DatabaseError(RuntimeError, ArchiveError):
    """The catalogue database cannot be opened, or its schema is not the expected one."""


class QueryError(LookupError, ArchiveError):
    """A named report query does not exist or its parameters are wrong."""


class UnsafePathError(ValueError, ArchiveError):
    """A destination path built from a name template and header values would leave its folder."""


class ProjectError(LookupError, ArchiveError):
    """A project does not exist, or one of that name already exists."""


class CalibrationNotFoundError(LookupError, ArchiveError):
    """No master calibration passes the matching rules; the message names the rule that
    removed the last candidates."""


class DestinationBusyError(RuntimeError, ArchiveError):
    """Another copyback or project collect is writing into the destination (it holds the
    folder's lock) and did not finish within the time allowed."""


class StorageError(RuntimeError, ArchiveError):
    """The catalogue or a destination cannot be written: disk or tablespace full, quota
    exceeded, read-only. What was committed before stays; the message is one line."""
