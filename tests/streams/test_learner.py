"""The learner: CLV refits from the clv-summaries topic, published as versions every worker's feed picks up."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from cvm.config import Config
from cvm.kafka import create_topics, decode_model, make_producer
from scoring import clv
from streams.learner import ClvFitter, Learner
from streams.models import ModelFeed

DAY = 86_400_000
AS_OF_DAY = 20_454  # 2026-01-01


def facts_of(n: int, seed: int) -> dict[str, dict]:
    """Occasion facts of customers drawn from known BG/NBD and Gamma-Gamma parameters (daily periods)."""
    x, t_x, age, m = clv.simulate(
        n, clv.BGNBD(0.5, 6.0, 0.7, 3.0), clv.GammaGamma(6.0, 4.0, 15.0), T=(4.0, 52.0), seed=seed
    )
    out = {}
    for i in range(n):
        first = AS_OF_DAY - int(round(age[i] * 7))
        last = first + int(round(t_x[i] * 7))
        repeat_cents = int(round(m[i] * x[i] * 100))
        out[f"c{i}"] = {"f": first, "l": last, "n": int(x[i]) + 1, "r": repeat_cents, "t": AS_OF_DAY * DAY}
    return out


def test_the_fitter_refits_only_when_enough_changed() -> None:
    fitter = ClvFitter()
    facts = facts_of(3000, seed=1)
    for cid, f in facts.items():
        fitter.offer(cid, f)
    assert fitter.due(min_customers=50, min_change=0.05)
    fit = fitter.fit()
    assert fit["customers"] == 3000 and fit["time_unit"] == "week" and fit["as_of"] == AS_OF_DAY * DAY
    # the parameters the learner publishes are those of fitting scoring.clv directly on the same summaries
    rows = np.array([[f["f"], f["l"], f["n"], f["r"]] for f in facts.values()])
    x, t_x, age, m = clv.summaries(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] / 100, AS_OF_DAY)
    direct = clv.fit_bgnbd(x, t_x, age).params.to_dict()
    assert {k: fit["bgnbd"][k] for k in direct} == pytest.approx(direct, rel=1e-9)
    assert not fitter.due(50, 0.05)  # nothing changed since
    for cid in list(facts)[:100]:
        fitter.offer(cid, facts[cid])  # the same facts again: no change
    assert not fitter.due(50, 0.05)
    for i, cid in enumerate(list(facts)[:200]):
        fitter.offer(cid, {**facts[cid], "n": facts[cid]["n"] + 1, "l": AS_OF_DAY, "r": facts[cid]["r"] + 500 + i})
    assert fitter.due(50, 0.05)


@pytest.mark.integration
def test_versions_reach_every_worker_feed_and_survive_a_learner_restart(cfg: Config) -> None:
    cfg = cfg.replace(clv_refit_s=0.0)
    create_topics(cfg)
    producer = make_producer(cfg)
    for cid, f in facts_of(500, seed=2).items():
        producer.produce(cfg.topic("clv-summaries"), key=cid.encode(), value=json.dumps(f).encode())
    producer.flush(10)
    worker_feed = ModelFeed(cfg).start()
    learner = Learner(cfg)
    learner.feed.start()
    try:
        deadline = time.monotonic() + 30
        while len(learner.clv.facts) < 500 and time.monotonic() < deadline:
            learner.poll(0.2)
        assert len(learner.clv.facts) == 500
        first = learner.feed.get("clv")  # fitted as soon as enough summaries had arrived (maybe more than once)
        assert first is not None and first[0]["version"] >= 1
        latest = learner.publish_clv()["version"]
        assert latest == first[0]["version"] + 1
    finally:
        learner.feed.stop()
    restarted = Learner(cfg)
    restarted.feed.start()
    try:
        deadline = time.monotonic() + 30
        while (restarted.feed.get("clv") or ({"version": 0},))[0]["version"] < latest and time.monotonic() < deadline:
            time.sleep(0.1)
        assert restarted.next_version("clv") == latest + 1
        while worker_feed.get("clv") is None or worker_feed.get("clv")[0]["version"] < latest:
            assert time.monotonic() < deadline, "the worker's feed never saw the latest version"
            time.sleep(0.1)
        meta, _ = worker_feed.get("clv")
        assert meta["customers"] == 500 and set(meta["bgnbd"]) >= {"r", "alpha", "a", "b", "log_likelihood"}
    finally:
        restarted.feed.stop()
        worker_feed.stop()


def pairs(n: int, seed: int = 3) -> list[dict]:
    """Labelled pairs with a signal: long recency churns."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        recency = float(rng.uniform(0, 120))
        label = int(rng.uniform() < (0.9 if recency > 60 else 0.1))
        features = {"recency_days": recency, "frequency": float(rng.integers(1, 20))}
        out.append({"customer_id": f"c{i % 300}", "snapshot_ms": (i // 300 + 1) * 30 * DAY, "label_ms": i * 1000,
                    "label": label, "features": features})  # fmt: skip
    return out


def test_the_trainer_learns_each_pair_once_and_resumes_from_its_publication(cfg: Config) -> None:
    from streams.learner import ChurnTrainer
    from streams.models import ModelFeed as Feed

    trainer = ChurnTrainer(cfg, None)
    data = pairs(1200)
    for offset, pair in enumerate(data[:800]):
        assert trainer.offer(pair, offset)
    assert not trainer.offer(data[10], 900)  # a worker emitted it twice: learned once
    model_msg, metrics_msg = trainer.publication(version=4)
    feed = Feed(cfg)
    feed.offer(model_msg)
    restored = ChurnTrainer(cfg, feed.get("churn"))
    assert restored.model.n_learned == 800 and restored.offset == 900 and restored.model.version == 4
    assert [restored.offer(p, 901 + i) for i, p in enumerate(data[795:805])] == [False] * 5 + [True] * 5
    metrics, _ = decode_model(metrics_msg)  # signed: the metadata follows the signature line
    assert metrics["model_version"] == 4 and metrics["metrics"]["roc_auc"] > 0.8


@pytest.mark.integration
def test_a_restarted_learner_continues_the_churn_model_and_learns_no_pair_twice(cfg: Config) -> None:
    cfg = cfg.replace(churn_publish_s=0.0)
    create_topics(cfg)
    producer = make_producer(cfg)
    data = pairs(900)

    def publish(rows: list[dict]) -> None:
        for pair in rows:
            producer.produce(
                cfg.topic("churn-labels"), key=pair["customer_id"].encode(), value=json.dumps(pair).encode()
            )
        producer.flush(10)

    def run_until(learner: Learner, n: int) -> None:
        deadline = time.monotonic() + 30
        while (learner.trainer is None or learner.trainer.model.n_learned < n) and time.monotonic() < deadline:
            learner.poll(0.1)
        assert learner.trainer is not None and learner.trainer.model.n_learned == n

    publish(data[:600])
    first = Learner(cfg)
    first.start()
    run_until(first, 600)
    first.publish_churn()
    first.feed.stop()  # killed: nothing more from it
    publish(data[500:900])  # 100 pairs again (a worker re-emitted them), then 300 new ones
    second = Learner(cfg)
    second.start()
    run_until(second, 900)
    time.sleep(0.5)
    second.poll(0.2)
    assert second.trainer is not None and second.trainer.model.n_learned == 900
    second.feed.stop()
