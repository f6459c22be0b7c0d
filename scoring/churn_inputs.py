"""The churn model's inputs: which features are heavy-tailed, and the model's view of one customer or of a batch.

:class:`scoring.churn.ChurnModel` learns and predicts on what this module prepares: :func:`prepare` for one
customer's feature dict (what :meth:`~scoring.churn.ChurnModel.learn_one` and the one-at-a-time predictions use) and
:func:`prepare_many` for the worker's batch (rows of :data:`scoring.labels.FEATURES` as a matrix, the very same floats;
what :meth:`~scoring.churn.ChurnModel.predict_many_with_reasons` uses). Heavy-tailed features (counts, money, days)
are seen as ``sign(v) * log1p(|v|)``. The model itself, its loss and its bytes are in :mod:`scoring.churn`; this
module imports nothing of it.

>>> row = [float(i) for i in range(len(FEATURES))]
>>> prepare(dict(zip(FEATURES, row)), FEATURES) == dict(zip(FEATURES, prepare_many([row])[0].tolist()))
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scoring.labels import FEATURES, MODEL_FEATURES

__all__ = ["prepare", "prepare_many"]

#: Heavy-tailed features (counts, money, days; any model input): the model sees ``sign(v) * log1p(|v|)`` of them.
_LOG_FEATURES = frozenset(
    {
        "recency_days",
        "frequency",
        "monetary",
        "tenure_days",
        "spend_trend",
        "spend_30d",
        "spend_90d",
        "purchases_30d",
        "purchases_90d",
        "contacts_30d",
        "complaints_30d",
        "n_cancellation_requests",
        "avg_days_past_due",
        "failed_payments_90d",
        "profitability",
        "typical_gap_days",
        "silence_gaps",
        "silence_rate",
        "days_since_contact",
        "contacts_7d",
        "unresolved_30d",
        "refunds_90d",
        "late_payments_90d",
        "clv",
    }
)

#: Positions in :data:`FEATURES` of the heavy-tailed ones.
_LOG_INDEX = [i for i, name in enumerate(FEATURES) if name in _LOG_FEATURES]


def prepare(x: Mapping[str, float | None], features: Sequence[str] = MODEL_FEATURES) -> dict[str, float]:
    """The model's view of a feature dict: its ``features`` only, heavy tails compressed, missing values dropped.

    >>> prepare({"silence_gaps": math.e - 1, "spend_trend": -(math.e - 1), "spend_vs_usual": 0.5, "other": 1.0})
    {'silence_gaps': 1.0, 'spend_vs_usual': 0.5, 'spend_trend': -1.0}
    >>> prepare({"silence_gaps": None, "frequency": float("nan")})
    {}
    >>> prepare({"silence_gaps": 0.0, "frequency": 1.0}, features=("frequency",))
    {'frequency': 0.6931471805599453}
    """
    out = {}
    for name in features:
        v = x.get(name)
        if v is None or v != v:
            continue
        v = float(v)
        if name in _LOG_FEATURES:
            v = math.copysign(math.log1p(abs(v)), v)
        out[name] = v
    return out


def prepare_many(rows: Sequence[Sequence[float | None]]) -> Any:
    """:func:`prepare` of rows of :data:`FEATURES` values, as a matrix (NaN: missing).

    The heavy tails are compressed with Python's ``math``, value by value, so each value is the float
    :func:`prepare` gives.
    """
    try:
        z = np.array(rows, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # a number numpy will not convert (None converts to NaN)
        z = np.array([[math.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != len(FEATURES):
        raise ValueError(f"churn rows must hold the {len(FEATURES)} FEATURES, got shape {z.shape}")
    heavy = z[:, _LOG_INDEX]
    # a zero (of either sign) is its own compressed value, and many counts are 0: only the others go through math
    nonzero = heavy != 0
    values = heavy[nonzero].tolist()
    # copysign(log1p(abs(v)), v) of every value, without a Python frame per value
    compressed = map(math.copysign, map(math.log1p, map(abs, values)), values)
    heavy[nonzero] = np.fromiter(compressed, np.float64, len(values))
    z[:, _LOG_INDEX] = heavy
    return z
