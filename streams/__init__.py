"""The Faust side of cvm: the app, its topics and table, and the batch processor its agent calls."""

from __future__ import annotations

from streams.processor import BatchProcessor, RawRecord

__all__ = ["BatchProcessor", "RawRecord"]
