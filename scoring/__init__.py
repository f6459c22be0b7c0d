"""Pure scoring logic: per-customer state, features, CLV and churn models.

Nothing here imports Kafka, Faust or ClickHouse: functions and small classes from state + event to state, and
from state to scores.
"""

from __future__ import annotations

from scoring.state import CustomerState

__all__ = ["CustomerState"]
