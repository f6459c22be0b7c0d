"""The model versions in force at a stream time, for the worker's scorings, and the models built from them.

:meth:`Versions.at` gives the versions valid at a tick (:meth:`streams.models.ModelFeed.at`), or ``None`` while the
learner has not said it published them: the tick waits for it, up to ``CVM_MODEL_WAIT_S``, then goes on with the
newest (a stretch a replay will not reproduce exactly). :meth:`Versions.valid_at` gives the versions valid at a
stream time without waiting, for the scorings between ticks (the last tick's models). The CLV model and churn heads
built from a version's message are kept (the last eight built), not built again at each tick.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from cvm import metrics
from cvm.config import Config
from scoring.bgnbd import BGNBD
from scoring.churn import ChurnModel
from scoring.clv import ClvModel
from scoring.gamma_gamma import GammaGamma
from streams.models import ModelFeed, unpack_churn
from streams.score import InForce

__all__ = ["Versions", "versions_of"]

log = logging.getLogger("cvm.worker")

Found = tuple[dict[str, Any], bytes] | None  # a models message (metadata, blob), if any


class Versions:
    """The models in force for a worker's scorings, from its model feed.

    Parameters
    ----------
    cfg
        How long a tick waits for the learner, the CLV horizon and discount rate.
    models
        The worker's model feed.
    monotonic
        The clock the wait for the learner is measured on.
    counters
        The worker's counters: a wait given up counts as ``model_wait_timeouts``.
    """

    def __init__(
        self,
        cfg: Config,
        models: ModelFeed,
        counters: Counter[str],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.models = models
        self.counters = counters
        self.monotonic = monotonic
        self.waiting_since: float | None = None  # since when a tick has waited for the learner (monotonic)
        self._cache: dict[tuple[str, int], Any] = {}

    def at(self, t: int) -> InForce | None:
        """The models valid at stream time ``t``; ``None`` while the learner has not published them yet."""
        if not self.models.covers(t):
            now = self.monotonic()
            if self.waiting_since is None:
                self.waiting_since = now
                metrics.model_waits.labels(outcome="waited").inc()
            if now - self.waiting_since < self.cfg.model_wait_s:
                return None
            self.counters["model_wait_timeouts"] += 1
            metrics.model_waits.labels(outcome="given_up").inc()
            log.warning(
                "the learner has not published the models of stream time %d for %.0f s: going on with the newest "
                "(this stretch of scores will not be reproduced exactly by a replay)",
                t,
                now - self.waiting_since,
            )
        self.waiting_since = None
        return self.valid_at(t)

    def valid_at(self, t: int) -> InForce:
        """The models valid at stream time ``t`` as far as the feed knows, without waiting for the learner (the
        scorings between ticks use the last tick's: a tick waited for them)."""
        return self._in_force(self.models.at("clv", t), self.models.at("churn", t))

    def _in_force(self, clv: Found, churn: Found) -> InForce:
        clv_model = None
        clv_version = churn_version = 0
        heads: tuple[ChurnModel, ...] = ()
        if clv is not None:
            clv_version = int(clv[0]["version"])
            clv_model = self._cached("clv", clv_version, lambda: self._clv_model(clv[0]))
        if churn is not None:
            churn_version, blob = int(churn[0]["version"]), churn[1]
            heads = self._cached(
                "churn", churn_version, lambda: tuple(ChurnModel.from_bytes(m) for m in unpack_churn(blob)["models"])
            )
        return InForce(clv_model, clv_version, heads, churn_version)

    def _cached(self, kind: str, version: int, build: Callable[[], Any]) -> Any:
        key = (kind, version)
        if key not in self._cache:
            if len(self._cache) >= 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = build()
        return self._cache[key]

    def _clv_model(self, meta: dict[str, Any]) -> ClvModel:
        gg = meta.get("gamma_gamma") or {}
        return ClvModel(
            BGNBD.from_dict(meta["bgnbd"]),
            GammaGamma.from_dict(gg) if "p" in gg else None,
            horizon_days=self.cfg.clv_horizon_days,
            discount_rate=self.cfg.clv_discount_rate,
        )


def versions_of(models: InForce) -> tuple[int, int]:
    """The CLV and churn versions of ``models`` (0: none)."""
    return models.clv_version, models.churn_version
