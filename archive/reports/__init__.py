"""Tables out of the catalogue: frame selections, summaries, problems and named queries,
all as pandas DataFrames."""

from archive.reports.catalog import FrameFilter, frame_query, list_problems, select_frames, summarize
from archive.reports.queries import NamedQuery, load_queries, run_query

__all__ = [
    "FrameFilter", "NamedQuery", "frame_query", "list_problems", "load_queries", "run_query",
    "select_frames", "summarize",
]
