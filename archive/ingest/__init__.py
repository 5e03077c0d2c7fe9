"""Getting frames into the catalogue: scanning folders, reading headers, normalizing them by
keyword dialects (``configs/dialects``) and writing frames and copies in transactions."""

from archive.ingest.dialects import DialectSet, Normalized
from archive.ingest.ingest import ingest_paths
from archive.ingest.runs import IngestSummary
from archive.ingest.normalize import normalize_header

__all__ = ["DialectSet", "IngestSummary", "Normalized", "ingest_paths", "normalize_header"]
