"""The churn model: an online, calibrated logistic regression of "gone within N days" with river's verbs.

The pairs it learns come from :mod:`scoring.labels` (label rules, snapshots, pending labels); the learner predicts
each pair before learning it (progressive validation, :mod:`scoring.metrics`), learns it with
:meth:`ChurnModel.learn_one` and publishes :meth:`ChurnModel.to_bytes` as new versions; workers score with
:meth:`ChurnModel.predict_many_with_reasons` (or :meth:`ChurnModel.predict_many`), which never change the model.
The labels are noisy — a customer who stays but buys rarely is labelled "gone" too — and the model knows how noisy
(:class:`NoisyLog`, :meth:`ChurnModel.noise`), so its probability is that of being gone, not of being silent.

The model's view of its inputs (:func:`~scoring.churn_inputs.prepare`: which features, heavy tails compressed) is in
:mod:`scoring.churn_inputs`.

``docs/churn.md`` states the design and the measurements that chose it. The label names are re-exported here.

>>> model = ChurnModel(noise_days=45)
>>> model.learn_one({"silence_gaps": 0.5, "frequency": 5.0, "tenure_days": 200.0}, 0)
>>> model.n_learned, 0.0 < model.churn_probability({"silence_gaps": 0.5}) < 0.5
(1, True)
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import river
from river import forest, linear_model, optim, preprocessing, tree
from river.utils.math import sigmoid

from scoring.churn_inputs import prepare, prepare_many
from scoring.labels import (
    DAY_MS,
    FEATURES,
    LEGACY_FEATURES,
    MAX_HEADS,
    MODEL_FEATURES,
    LabelRule,
    Matured,
    PendingLabels,
    Snapshot,
    label_rules,
    pack_snapshot,
    unpack_snapshot,
)

__all__ = [
    "DAY_MS",
    "FEATURES",
    "LEGACY_FEATURES",
    "MAX_HEADS",
    "MODELS",
    "MODEL_FEATURES",
    "ChurnModel",
    "LabelRule",
    "Matured",
    "NoisyLog",
    "PendingLabels",
    "Snapshot",
    "label_rules",
    "pack_snapshot",
    "unpack_snapshot",
]

#: The prior of a customer's purchase rate in :meth:`ChurnModel.noise`: Gamma with this shape and this many days
#: per unit of shape (mean: one purchase a month).
NOISE_PRIOR_SHAPE = 1.0
NOISE_PRIOR_DAYS = 30.0

#: The model kinds :class:`ChurnModel` builds (``CVM_CHURN_MODEL``).
MODELS = ("logreg", "hat", "arf")


# --- the model ------------------------------------------------------------------------------------------------------


class NoisyLog(optim.losses.Log):
    """Log loss of a label that is 1 for a leaver and, with a known probability ρ, for a stayer too.

    ``P(label 1) = q + (1 − q) ρ`` with ``q = sigmoid(z)`` the probability that the customer is gone. A label 0 is
    passed as 0 (the usual log loss of ``1 − q``); a label 1 as ``1 + ρ``. ``ρ = 0`` is the usual log loss; ``ρ = 1``
    (a stayer would be labelled 1 anyway) teaches nothing. The gradient is with respect to ``z``, as river's losses.

    >>> loss = NoisyLog()
    >>> round(loss.gradient(1.0, 0.0), 4), round(loss.gradient(1.5, 0.0), 4), loss.gradient(0, 0.0)
    (-0.5, -0.1667, 0.5)
    """

    def __call__(self, y_true: Any, y_pred: Any) -> Any:
        q = sigmoid(y_pred)
        if y_true < 1:
            return -math.log(max(1e-15, 1.0 - q))
        rho = min(1.0, float(y_true) - 1.0)
        return -math.log(max(1e-15, q + (1.0 - q) * rho))

    def gradient(self, y_true: Any, y_pred: Any) -> Any:
        q = sigmoid(y_pred)
        if y_true < 1:
            return q
        rho = min(1.0, float(y_true) - 1.0)
        return -q * (1.0 - q) * (1.0 - rho) / max(1e-15, q + (1.0 - q) * rho)


_MODEL_MAGIC = b"CVMCHURN"
_MODEL_FORMAT = 1


class ChurnModel:
    """An online churn classifier with river's verbs; predictions never change it.

    Parameters
    ----------
    kind
        ``logreg`` (standard-scaled logistic regression, the default), ``hat`` (Hoeffding adaptive tree) or ``arf``
        (adaptive random forest of ``n_models`` trees).
    lr
        Learning rate of the logistic regression: AdaGrad's for the weights (each feature's rate shrinks as its
        gradients add up, so the early pairs move the weights fast and later ones fine-tune), plain SGD's for the
        intercept.
    l2
        L2 penalty of the logistic regression.
    clip
        Scaled features are clipped to ``[-clip, clip]``: an outlier (or an early, barely-fitted scaler) cannot
        throw the weights off.
    n_models
        Trees of the ``arf`` forest.
    seed
        Seed of the tree models.
    features
        The model's inputs (None: :data:`MODEL_FEATURES`). Snapshots hold :data:`FEATURES`; the worker's rows too
        (:meth:`predict_many_with_reasons`), so a model reading other names is for studies only.
    noise_days
        The label rule's silence (after its offset), for a logistic regression that knows its labels are noisy: a
        customer who stays but buys less often than that is labelled 1 too, with probability
        ``ρ`` (:meth:`noise`, from the customer's own purchase record). The model then
        learns the probability ``q`` that the customer is gone, from ``P(label 1) = q + (1 − q) ρ`` (:class:`NoisyLog`).
        0 turns it off (plain log loss: the model learns the label's probability).

    Attributes
    ----------
    version
        The published version: the trainer increments it before :meth:`to_bytes` (0: never published).
    n_learned
        Pairs learned so far.

    Examples
    --------
    >>> m = ChurnModel()
    >>> for i in range(1000):
    ...     m.learn_one({"silence_gaps": float(i % 100) / 10, "frequency": 1.0}, int(i % 100 > 60))
    >>> m.churn_probability({"silence_gaps": 9.5}) > 0.5 > m.churn_probability({"silence_gaps": 0.5})
    True
    >>> m.reasons({"silence_gaps": 9.5, "frequency": 1.0}, k=1)
    ['silence_gaps +1.1']
    >>> copy = ChurnModel.from_bytes(m.to_bytes())
    >>> copy.n_learned, copy.churn_probability({"silence_gaps": 9.5}) == m.churn_probability({"silence_gaps": 9.5})
    (1000, True)
    >>> m.clone().n_learned
    0
    """

    def __init__(
        self,
        kind: str = "logreg",
        lr: float = 0.05,
        l2: float = 1e-4,
        clip: float = 5.0,
        n_models: int = 10,
        seed: int = 42,
        features: Sequence[str] | None = None,
        noise_days: float = 0.0,
    ) -> None:
        if kind not in MODELS:
            raise ValueError(f"unknown churn model {kind!r}: use one of {', '.join(MODELS)}")
        chosen = tuple(dict.fromkeys(MODEL_FEATURES if features is None else features))
        if not chosen:
            raise ValueError("a churn model needs at least one feature")
        if not noise_days >= 0:
            raise ValueError(f"noise_days must be >= 0, got {noise_days}")
        # FEATURES order first (the order rows come in), then any other names a study may give
        self.features = (*(n for n in FEATURES if n in chosen), *(n for n in chosen if n not in FEATURES))
        self.noise_days = float(noise_days)
        self.kind = kind
        self.lr = lr
        self.l2 = l2
        self.clip = clip
        self.n_models = n_models
        self.seed = seed
        self.version = 0
        self.n_learned = 0
        # Every kind keeps the scaler: the logistic regression learns on its output, and the reason codes of every
        # kind measure a feature against its running mean.
        self._scaler = preprocessing.StandardScaler()
        self._clf: Any
        if kind == "logreg":
            loss = NoisyLog() if self.noise_days else optim.losses.Log()
            self._clf = linear_model.LogisticRegression(optimizer=optim.AdaGrad(lr), loss=loss, l2=l2, intercept_lr=lr)
        elif kind == "hat":
            self._clf = tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, seed=seed)
        else:
            self._clf = forest.ARFClassifier(n_models=n_models, seed=seed)

    # The scaler and the classifier are driven step by step rather than through a river Pipeline: a Pipeline's
    # predictions update its scaler inside `compose.learn_during_predict()`, a process-wide switch, and scoring
    # must never change the model whatever else runs in the process.

    def _scaled(self, z: dict[str, float]) -> dict[str, float]:
        c = self.clip
        return {k: min(c, max(-c, v)) for k, v in self._scaler.transform_one(z).items()}

    def _inputs(self, z: dict[str, float]) -> dict[str, float]:
        return self._scaled(z) if self.kind == "logreg" else z

    def noise(self, x: Mapping[str, float | None]) -> float:
        """ρ: the chance that this customer, staying, makes no purchase for ``noise_days`` and is labelled 1 anyway
        (0 when ``noise_days`` is off).

        The customer's purchases are Poisson at a rate unknown but for its ``frequency`` occasions in
        ``tenure_days``; with a Gamma(:data:`NOISE_PRIOR_SHAPE`, :data:`NOISE_PRIOR_DAYS`) prior on the rate, the
        chance of no purchase in H days is the negative binomial's ``((b + E) / (b + E + H)) ** (a + n)``: a customer
        seen buying rarely, or seen for a short time only, may well stay silent for H days.

        >>> m = ChurnModel(noise_days=60)
        >>> new, regular = {"frequency": 0, "tenure_days": 0}, {"frequency": 12, "tenure_days": 365}
        >>> round(m.noise(new), 3), round(m.noise(regular), 3)
        (0.333, 0.159)
        """
        if not self.noise_days:
            return 0.0
        n = x.get("frequency") or 0.0
        exposure = x.get("tenure_days") or 0.0
        if not (n == n and exposure == exposure):
            return 0.0
        b = NOISE_PRIOR_DAYS + max(0.0, float(exposure))
        return float((b / (b + self.noise_days)) ** (NOISE_PRIOR_SHAPE + max(0.0, float(n))))

    def learn_one(self, x: Mapping[str, float | None], y: int | bool) -> None:
        """Learn one matured pair: features ``x`` (as snapshotted) and label ``y`` (1: churned)."""
        z = prepare(x, self.features)
        self._scaler.learn_one(z)
        target: float | bool = bool(y)
        if self.kind == "logreg" and self.noise_days and y:
            target = 1.0 + self.noise(x)  # NoisyLog's encoding of a 1 and its ρ
        self._clf.learn_one(self._inputs(z), target)
        self.n_learned += 1

    def label_probability(self, x: Mapping[str, float | None]) -> float:
        """The probability that the label rule labels this customer 1: ``q + (1 − q) ρ``, what matured labels test
        (progressive validation); :meth:`churn_probability` without label noise."""
        q = self.churn_probability(x)
        rho = self.noise(x) if self.kind == "logreg" else 0.0
        return q + (1.0 - q) * rho

    def predict_proba_one(self, x: Mapping[str, float | None]) -> dict[bool, float]:
        """``{False: p(stays), True: p(churns)}``, river's form; changes nothing."""
        p = self.churn_probability(x)
        return {False: 1.0 - p, True: p}

    def churn_probability(self, x: Mapping[str, float | None]) -> float:
        """The probability that the customer churns under the label rule; changes nothing."""
        return self._p(self._inputs(prepare(x, self.features)))

    def _p(self, inputs: dict[str, float]) -> float:
        return float(self._clf.predict_proba_one(inputs).get(True, 0.0))

    def contributions(self, x: Mapping[str, float | None]) -> dict[str, float]:
        """Each present feature's signed push on the churn log-odds, measured against the feature's running mean.

        Logistic regression: weight × scaled value (exact). Trees: the change of the log-odds when the feature is
        set to its mean (one extra prediction per feature). Positive: raises the churn risk.
        """
        return self._explain(prepare(x, self.features))[1]

    def _explain(self, z: dict[str, float]) -> tuple[float, dict[str, float]]:
        if self.kind == "logreg":
            scaled = self._scaled(z)
            weights = self._clf.weights
            return self._p(scaled), {k: weights.get(k, 0.0) * v for k, v in scaled.items()}
        means = self._scaler.means
        p = self._p(z)
        base = _logit(p)
        return p, {k: base - _logit(self._p({**z, k: means[k]})) for k in z if k in means}

    def reasons(self, x: Mapping[str, float | None], k: int = 3) -> list[str]:
        """The ``k`` largest contributions (see :meth:`contributions`) as ``"name +1.8"`` (log-odds), largest first.

        Contributions that round to zero are left out, so a fresh model gives no reasons.
        """
        return _top(self.contributions(x), k)

    def predict_with_reasons(self, x: Mapping[str, float | None], k: int = 3) -> tuple[float, list[str]]:
        """:meth:`churn_probability` and :meth:`reasons` in one pass (what a worker calls on every update).

        >>> ChurnModel().predict_with_reasons({"silence_gaps": 1.0})
        (0.5, [])
        """
        p, contributions = self._explain(prepare(x, self.features))
        return p, _top(contributions, k)

    def predict_many(self, rows: Sequence[Sequence[float | None]], prepared: np.ndarray | None = None) -> list[float]:
        """:meth:`churn_probability` of many customers in one pass (rows of :data:`FEATURES`, as
        :meth:`predict_many_with_reasons`, and ``prepared`` as there): what a worker calls for a head whose reasons
        it does not show.

        >>> ChurnModel().predict_many([[1.0] * len(FEATURES)])
        [0.5]
        """
        scored = self._logreg_many(rows, 0, prepared)
        if scored is None:
            return [p for p, _ in self.predict_many_with_reasons(rows, 0)]
        return scored[0]

    def predict_many_with_reasons(
        self, rows: Sequence[Sequence[float | None]], k: int = 3, prepared: np.ndarray | None = None
    ) -> list[tuple[float, list[str]]]:
        """:meth:`predict_with_reasons` of many customers in one pass; ``rows`` hold the :data:`FEATURES` in order
        (None or NaN: missing). ``prepared`` is :func:`~scoring.churn_inputs.prepare_many` of ``rows`` when the
        caller has it (the heads of a worker score the same rows); None prepares them here.

        The logistic regression is scored with numpy over the whole batch in the very floating-point operations,
        in the same order, as one :meth:`predict_with_reasons` call per row, so the results are the same floats and
        the same strings; the transcendental steps (``log1p``, the sigmoid) stay in Python's ``math``, whose
        results numpy's vectorised versions need not match to the last bit. Tree models, and rows the vectorised
        form would treat differently (NaN after scaling), go through :meth:`predict_with_reasons` one at a time.

        >>> m = ChurnModel()
        >>> for i in range(200):
        ...     m.learn_one({"silence_gaps": float(i % 100) / 10, "tenure_days": 99.0}, int(i % 100 > 60))
        >>> rows = [[9.5] + [None] * (len(FEATURES) - 1), [float("nan")] + [0.5] * (len(FEATURES) - 1)]
        >>> m.predict_many_with_reasons(rows) == [m.predict_with_reasons(dict(zip(FEATURES, r))) for r in rows]
        True
        """
        scored = self._logreg_many(rows, k, prepared)
        if scored is None:
            one = self.predict_with_reasons
            return [one(dict(zip(FEATURES, row, strict=True)), k) for row in rows]
        return list(zip(*scored, strict=True))

    def _logreg_many(
        self, rows: Sequence[Sequence[float | None]], k: int, prepared: np.ndarray | None
    ) -> tuple[list[float], list[list[str]]] | None:
        """The probabilities and the ``k`` reasons of each row, vectorised (:meth:`predict_many_with_reasons`); None
        for a model that is not vectorised here (trees, another loss or scaler)."""
        scaler = self._scaler
        if (
            self.kind != "logreg"
            or not isinstance(self._clf, linear_model.LogisticRegression)
            or type(self._clf.loss) not in (optim.losses.Log, NoisyLog)
            or getattr(scaler, "window_size", None) is not None
            or not scaler.with_std
        ):
            return None
        if not rows:
            return [], []
        means, variances, weights = scaler.means, scaler.vars, self._clf.weights
        mean = [means.get(name, 0.0) for name in FEATURES]
        var = [variances.get(name, 0.0) for name in FEATURES]
        if not all(isinstance(v, float | int) and v >= 0 for v in var):  # v ** 0.5 would not be a real number
            return None
        z = prepare_many(rows) if prepared is None else prepared
        present = ~np.isnan(z)
        c = self.clip
        with np.errstate(all="ignore"):
            scaled = np.zeros(z.shape)
            for j, v in enumerate(var):
                if v:
                    scaled[:, j] = (z[:, j] - mean[j]) / v**0.5
            bad = present & np.isnan(scaled)  # Python's min/max treat NaN apart from numpy's
            scaled = np.minimum(c, np.maximum(-c, scaled))
            # river's dot product: the present features in FEATURES order, those without a weight skipped
            acc = np.zeros(len(rows))
            for j, name in enumerate(FEATURES):
                if name in weights:
                    acc = np.where(present[:, j], acc + weights[name] * scaled[:, j], acc)
            raw = acc + self._clf.intercept
            contrib = scaled * np.array([weights.get(name, 0.0) for name in FEATURES])
            bad |= present & np.isnan(contrib)
            # the k largest contributions of each row (none asked: no sort)
            order = np.argsort(np.where(present, -np.abs(contrib), np.inf), axis=1, kind="stable")[:, :k] if k else None
        probabilities = [float(sigmoid(logit)) for logit in raw.tolist()]
        reasons: list[list[str]] = [[] for _ in probabilities]
        if order is not None:
            for i, top in enumerate(order.tolist()):
                for j in top:
                    if not present[i, j]:
                        break
                    value = float(contrib[i, j])
                    if round(value, 1) != 0:
                        reasons[i].append(f"{FEATURES[j]} {value:+.1f}")
        for i in np.flatnonzero(bad.any(axis=1)).tolist():
            probabilities[i], reasons[i] = self.predict_with_reasons(dict(zip(FEATURES, rows[i], strict=True)), k)
        return probabilities, reasons

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """The constructor's parameters."""
        return {
            "kind": self.kind,
            "lr": self.lr,
            "l2": self.l2,
            "clip": self.clip,
            "n_models": self.n_models,
            "seed": self.seed,
            "features": self.features,
            "noise_days": self.noise_days,
        }

    def clone(self) -> ChurnModel:
        """A fresh, untrained model with the same parameters."""
        return ChurnModel(**self.params())

    def to_bytes(self) -> bytes:
        """The model as published: a versioned header, then a pickle (trusted topics only: unpickling runs code)."""
        body = pickle.dumps(
            {
                "params": self.params(),
                "version": self.version,
                "n_learned": self.n_learned,
                "scaler": self._scaler,
                "clf": self._clf,
                "river": river.__version__,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        return _MODEL_MAGIC + bytes([_MODEL_FORMAT]) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> ChurnModel:
        """The model that :meth:`to_bytes` wrote; ValueError when the bytes are not a churn model of this format."""
        head = len(_MODEL_MAGIC)
        if data[:head] != _MODEL_MAGIC or len(data) <= head:
            raise ValueError("not a cvm churn model")
        if data[head] != _MODEL_FORMAT:
            raise ValueError(f"unknown churn model format {data[head]}")
        state = pickle.loads(data[head + 1 :])
        m = cls(**state["params"])
        if "features" in state["params"]:  # the very objects the scaler's keys share: bytes round-trip exactly
            m.features = state["params"]["features"]
        m.version = state["version"]
        m.n_learned = state["n_learned"]
        m._scaler = state["scaler"]
        m._clf = state["clf"]
        return m

    def __repr__(self) -> str:
        return f"ChurnModel(kind={self.kind!r}, version={self.version}, n_learned={self.n_learned})"


def _top(contributions: dict[str, float], k: int) -> list[str]:
    top = sorted(contributions.items(), key=lambda kv: -abs(kv[1]))[:k]
    return [f"{name} {c:+.1f}" for name, c in top if round(c, 1) != 0]


def _logit(p: float) -> float:
    p = min(1.0 - 1e-9, max(1e-9, p))
    return math.log(p / (1.0 - p))
