"""Logging of every cvm process: text lines, or one JSON object per line (``CVM_LOG_FORMAT=json``).

A JSON line carries ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, ``process``, and ``error`` with
the traceback when there is one, plus any ``extra={...}`` fields given to the logging call.

>>> import io, json, logging
>>> out = io.StringIO()
>>> handler = logging.StreamHandler(out)
>>> handler.setFormatter(JsonFormatter())
>>> logger = logging.getLogger("cvm.doctest")
>>> logger.addHandler(handler)
>>> logger.warning("lag %d", 42, extra={"topic": "transactions"})
>>> line = json.loads(out.getvalue())
>>> line["level"], line["logger"], line["message"], line["topic"]
('WARNING', 'cvm.doctest', 'lag 42', 'transactions')
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from cvm.config import Config

__all__ = ["JsonFormatter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes every LogRecord has: what is not among them came with ``extra``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(cfg: Config) -> None:
    """Configure the root logger from ``CVM_LOG_LEVEL`` and ``CVM_LOG_FORMAT``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if cfg.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, cfg.log_level.upper(), logging.WARNING))
