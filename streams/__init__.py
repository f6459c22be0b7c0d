"""The Faust side of cvm: the worker (scorer and steps: decode, fold, score, delivery, stream clock; its partitions,
the model versions in force), the learner."""

from __future__ import annotations

from streams.records import Event, Outputs, RawRecord
from streams.scorer import Scorer

__all__ = ["Event", "Outputs", "RawRecord", "Scorer"]
