"""The learner on the stream-time grid: CLV refits and churn training as of each grid point, versions valid from it,
its clock, duplicates, a restart; every worker's feed finds the version of its stream time."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from cvm.config import Config
from cvm.kafka import create_topics, decode_model, make_producer
from scoring import bgnbd, clv, gamma_gamma
from streams.learner import ClvFitter, Learner
from streams.models import ModelFeed

DAY = 86_400_000
AS_OF_DAY = 20_454  # 2026-01-01


def facts_of(n: int, seed: int) -> dict[str, dict]:
    """Occasion facts of customers drawn from known BG/NBD and Gamma-Gamma parameters (daily periods)."""
    x, t_x, age, m = clv.simulate(
        n, bgnbd.BGNBD(0.5, 6.0, 0.7, 3.0), gamma_gamma.GammaGamma(6.0, 4.0, 15.0), T=(4.0, 52.0), seed=seed
    )
    out = {}
    for i in range(n):
        first = AS_OF_DAY - int(round(age[i] * 7))
        last = first + int(round(t_x[i] * 7))
        repeat_cents = int(round(m[i] * x[i] * 100))
        out[f"c{i}"] = {"f": first, "l": last, "n": int(x[i]) + 1, "r": repeat_cents, "k": AS_OF_DAY * DAY}
    return out


GRID = 7 * DAY


def test_the_fitter_counts_facts_known_by_its_clock_and_refits_when_enough_changed() -> None:
    fitter = ClvFitter()
    facts = facts_of(3000, seed=1)
    clock = AS_OF_DAY * DAY - 1
    for cid, f in facts.items():
        fitter.offer(cid, f, clock)  # known after the clock: they wait
    assert not fitter.facts and not fitter.due(50, 0.05)
    fitter.move_to(AS_OF_DAY * DAY)
    assert len(fitter.facts) == 3000 and fitter.due(min_customers=50, min_change=0.05)
    fit = fitter.fit(AS_OF_DAY * DAY)
    assert fit["customers"] == 3000 and fit["time_unit"] == "week" and fit["as_of"] == AS_OF_DAY * DAY
    # the parameters the learner publishes are those of fitting scoring.bgnbd directly on the same summaries
    rows = np.array([[f["f"], f["l"], f["n"], f["r"]] for _, f in sorted(facts.items())])  # in customer order
    x, t_x, age, m = clv.summaries(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] / 100, AS_OF_DAY)
    direct = bgnbd.fit_bgnbd(x, t_x, age).params.to_dict()
    assert {k: fit["bgnbd"][k] for k in direct} == pytest.approx(direct, rel=1e-9)
    assert not fitter.due(50, 0.05)  # nothing changed since
    for cid in list(facts)[:200]:
        fitter.offer(cid, facts[cid], AS_OF_DAY * DAY)  # the same facts again: no change
    assert not fitter.due(50, 0.05)
    for i, cid in enumerate(list(facts)[:200]):
        changed = {**facts[cid], "n": facts[cid]["n"] + 1, "l": AS_OF_DAY, "r": facts[cid]["r"] + 500 + i}
        fitter.offer(cid, changed, AS_OF_DAY * DAY)
    assert fitter.due(50, 0.05)


def test_the_same_facts_in_another_order_fit_the_same_floats() -> None:
    facts = list(facts_of(800, seed=4).items())
    fits = []
    for order in (facts, facts[::-1]):
        fitter = ClvFitter()
        for cid, f in order:
            fitter.offer(cid, f, AS_OF_DAY * DAY)
        fits.append(fitter.fit(AS_OF_DAY * DAY))
    assert fits[0]["bgnbd"] == fits[1]["bgnbd"] and fits[0]["gamma_gamma"] == fits[1]["gamma_gamma"]


def pairs(n: int, seed: int = 3) -> list[dict]:
    """Labelled pairs with a signal (a long silence against the customer's own gap churns), known over 20 weeks of
    stream time."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        silence = float(rng.uniform(0, 6))
        label = int(rng.uniform() < (0.9 if silence > 3 else 0.1))
        features = {"silence_gaps": silence, "frequency": float(rng.integers(1, 20))}
        known = (1 + i * 20 // n) * GRID - DAY
        out.append({"customer_id": f"c{i % 300}", "snapshot_ms": (i // 300 + 1) * 30 * DAY, "label_ms": known - DAY,
                    "known_ms": known, "label": label, "features": features})  # fmt: skip
    return out


def test_the_trainer_learns_the_pairs_of_each_grid_point_in_one_order_and_each_once(cfg: Config) -> None:
    from streams.learner import ChurnTrainer

    data = pairs(1200)
    models = []
    for order in (data, data[::-1]):
        trainer = ChurnTrainer(cfg, None)
        for offset, pair in enumerate(order):
            assert trainer.offer(pair, offset, clock=None)
        assert not trainer.offer(order[10], 2000, clock=None)  # a worker emitted it twice: learned once
        learned = sum(trainer.learn_through(g * GRID) for g in range(1, 21))
        assert learned == 1200 and not trainer.waiting
        assert not trainer.offer(order[10], 2001, clock=20 * GRID)  # known before the clock: learned already
        models.append(trainer.model.to_bytes())
    assert models[0] == models[1]  # the order pairs arrive in does not matter
    model_msg, metrics_msg = trainer.publication(version=4, valid_from=20 * GRID)
    feed = ModelFeed(cfg)
    feed.offer(model_msg)
    restored = ChurnTrainer(cfg, feed.get("churn"))
    assert restored.model.n_learned == 1200 and restored.model.version == 4
    assert feed.at("churn", 20 * GRID) is None and feed.at("churn", 20 * GRID + 1) is not None
    metrics = decode_model(metrics_msg)[0]
    assert metrics["model_version"] == 4 and metrics["metrics"]["roc_auc"] > 0.8


def progress(cfg: Config, producer: Any, tick: int, summaries: int = -1) -> None:
    message = {"kind": "progress", "partitions": {str(p): tick for p in range(cfg.partitions)}, "idle": [],
               "summaries": summaries}  # fmt: skip
    producer.produce(cfg.topic("churn-labels"), key=b"progress", value=json.dumps(message).encode())
    producer.flush(10)


@pytest.mark.integration
def test_the_learner_moves_on_the_grid_and_a_restart_learns_no_pair_twice(cfg: Config) -> None:
    create_topics(cfg)
    producer = make_producer(cfg)
    data = pairs(900)

    def publish(rows: list[dict]) -> None:
        for pair in rows:
            producer.produce(
                cfg.topic("churn-labels"), key=pair["customer_id"].encode(), value=json.dumps(pair).encode()
            )
        producer.flush(10)

    def run_until(learner: Learner, clock: int) -> None:
        deadline = time.monotonic() + 30
        while (learner.clock or -1) < clock and time.monotonic() < deadline:
            learner.poll(0.1)
        assert learner.clock == clock

    for cid, f in facts_of(500, seed=2).items():
        producer.produce(cfg.topic("clv-summaries"), key=cid.encode(), value=json.dumps({**f, "k": 3 * GRID}).encode())
    producer.flush(10)
    worker_feed = ModelFeed(cfg).start()
    first = Learner(cfg)
    first.start()
    publish(data[:600])
    progress(cfg, producer, 0)
    run_until(first, 0)  # every partition said where it is: the clock starts
    progress(cfg, producer, 10 * GRID + DAY)
    run_until(first, 10 * GRID)
    assert first.trainer is not None and first.trainer.model.n_learned == 450  # the pairs known by week 10
    churn, clv_meta = first.feed.get("churn"), first.feed.get("clv")
    assert churn is not None and churn[0]["valid_from"] == 10 * GRID
    assert clv_meta is not None and clv_meta[0]["valid_from"] == 3 * GRID and clv_meta[0]["customers"] == 500
    first.feed.stop()  # killed: nothing more from it
    publish(data[400:900])  # 200 pairs again (a worker re-emitted them after a crash), then 300 new ones
    progress(cfg, producer, 20 * GRID)
    second = Learner(cfg)
    second.start()
    assert second.clock == 10 * GRID
    run_until(second, 20 * GRID)
    assert second.trainer is not None and second.trainer.model.n_learned == 900
    assert second.next_version("churn") > churn[0]["version"] + 1
    deadline = time.monotonic() + 30
    while not worker_feed.covers(20 * GRID + 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    at = worker_feed.at("churn", 15 * GRID)
    assert worker_feed.covers(20 * GRID + 1) and at is not None and at[0]["valid_from"] <= 14 * GRID
    second.feed.stop()
    worker_feed.stop()


@pytest.mark.integration
def test_a_worker_s_feed_is_ready_once_it_read_the_models_published_one_by_one(cfg: Config) -> None:
    """The learner publishes its model messages one at a time; a worker starts scoring once its feed has read them.
    Tansu's high watermark is the base offset of the last record batch + 1: after batches of one record, the end
    itself. The feed waited for one record past the end (until the learner's next message, or 15 s)."""
    from cvm.kafka import ModelKey, encode_model

    create_topics(cfg)
    producer = make_producer(cfg)
    key = ModelKey.from_config(cfg)
    for version in (1, 2, 3):
        producer.produce(cfg.topic("models"), value=encode_model({"kind": "clv", "version": version}, b"", key=key))
        producer.flush(10)
    feed = ModelFeed(cfg).start()
    try:
        assert feed.ready.wait(5.0), "the feed never said it had read the models topic"
        meta = feed.get("clv")
        assert meta is not None and meta[0]["version"] == 3
    finally:
        feed.stop()
