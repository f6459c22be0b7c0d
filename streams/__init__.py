"""The Faust side of cvm: the worker app (scoring service, table, label timer), its batch processor, the learner."""

from __future__ import annotations

from streams.processor import BatchProcessor, RawRecord

__all__ = ["BatchProcessor", "RawRecord"]
