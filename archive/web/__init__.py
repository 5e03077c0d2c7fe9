"""``archive serve``: a read-only local web view of the catalogue (Starlette, Jinja2, uvicorn).

Pages: the nights and a page per night, the targets with their integration per filter over the
nights (accepted against total), a page per frame (preview, whole header beside the
normalized values and where each came from, quality, copies, provenance both ways), the
master library with each kind's validity over time, the named reports of ``queries/`` as
forms with CSV and JSON downloads, and the problems, failures and rejections.

It sits above the reports (it reads through :mod:`archive.reports`, :mod:`archive.calib` and
:mod:`archive.db`'s functions, never SQL of its own) and below the command line. Nothing is
loaded from another site; it serves only files the catalogue knows, looked up by frame id.
"""

from archive.web.app import create_app, serve

__all__ = ["create_app", "serve"]
