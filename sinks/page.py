"""The dashboard's page: the files served to the browser (``sinks/static/``), found and typed for ``sinks.http``.

``GET /`` and ``GET /index.html`` answer :func:`index_html` (read once, when the server starts); ``GET /static/<path>``
answers :func:`static_file`. The page is HTML, JavaScript and CSS that fetch their figures from the JSON API; the
queries behind those figures and the shaping of their answers are :mod:`sinks.dashboard`, a concept of its own (one
per module). ``pyproject.toml`` ships the folder as package data.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import unquote

__all__ = ["STATIC_DIR", "index_html", "static_file"]

#: Where the page lives: ``index.html``, ``app.js``, ``app.css`` and ``vendor/`` (the charting library).
STATIC_DIR = Path(__file__).resolve().parent / "static"

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain", ".md": "text/plain"}


def index_html() -> bytes:
    """The page itself, ``index.html`` (its scripts and styles come from ``/static/``)."""
    return (STATIC_DIR / "index.html").read_bytes()


def static_file(path: str) -> tuple[bytes, str] | None:
    """The bytes and content type of ``/static/<path>`` (a file under :data:`STATIC_DIR`), or None.

    Only plain files inside the folder are served: ``..``, absolute paths and hidden files are refused.

    >>> static_file("/static/../dashboard.py") is None, static_file("/static/.hidden") is None
    (True, True)
    """
    rel = unquote(path.removeprefix("/static/"))
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or p.startswith(".") for p in parts) or "\\" in rel:
        return None
    target = (STATIC_DIR / rel).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        return None
    kind = _TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if kind.startswith("text/"):
        kind += "; charset=utf-8"
    return target.read_bytes(), kind
