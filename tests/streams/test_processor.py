"""The worker's batch processor, without Faust: grouping, idempotence, dead letters and late events."""

from __future__ import annotations

import time

from cvm.codec import Codec
from cvm.config import Config
from scoring.state import CustomerState
from streams.processor import BatchOutput, BatchProcessor, RawRecord

DAY = 86_400_000
NOW = int(time.time() * 1000)
CFG = Config.load(env={})
CODEC = Codec()


def raw(offset: int, kind: str = "transactions", **fields) -> RawRecord:
    rec = {"event_id": f"e{offset}", "customer_id": "c1", "event_time": NOW - DAY + offset, "amount": 2.0}
    if kind == "contacts":
        rec = {"event_id": f"e{offset}", "customer_id": "c1", "event_time": NOW - DAY + offset}
        rec.update(channel="email", reason="complaint")
    rec.update(fields)
    return RawRecord(kind, 0, offset, rec["customer_id"].encode(), CODEC.encode(kind, rec))


def processor() -> BatchProcessor:
    return BatchProcessor(CFG, CODEC, {k: k for k in ("transactions", "contacts", "payments")})


def test_one_state_and_one_score_per_customer_per_batch() -> None:
    store: dict[str, bytes] = {}
    out = processor().process([raw(i) for i in range(10)] + [raw(10, customer_id="c2")], store.get)
    assert sorted(out.states) == ["c1", "c2"]
    assert [cid for cid, _ in out.scores] == ["c1", "c2"]
    assert out.scores[0][1]["n_transactions"] == 10 and out.scores[0][1]["version"] == 10


def test_redelivered_batch_changes_nothing_and_emits_nothing() -> None:
    store: dict[str, bytes] = {}
    p = processor()
    batch = [raw(i) for i in range(5)]
    store.update(p.process(batch, store.get).states)
    again = p.process(batch, store.get)
    assert again.counts["redelivered"] == 5 and not again.scores
    assert CustomerState.from_bytes(again.states["c1"]).revenue_cents == 1000


def test_poison_goes_to_dead_letters_and_the_batch_goes_on() -> None:
    store: dict[str, bytes] = {}
    poison = [
        RawRecord("transactions", 1, 7, b"k", b"\xff\xfe"),
        RawRecord("transactions", 1, 8, None, None),
        raw(9, amount=float("nan")),
        raw(10, customer_id=""),
        raw(11, event_time=NOW + 400 * DAY),
        RawRecord("transactions", 0, 12, b"c1", raw(12, kind="contacts").value),
    ]
    out = processor().process([raw(1), *poison, raw(2)], store.get)
    assert out.counts["dead"] == 6 and out.counts["applied"] == 2
    reasons = [letter["error_class"] for _, letter in out.dead_letters]
    assert reasons == ["DecodeError", "DecodeError", "InvalidEvent", "InvalidEvent", "InvalidEvent", "DecodeError"]
    assert out.dead_letters[0][1]["offset"] == 7 and out.dead_letters[0][1]["raw_b64"] == "//4="


def test_late_events_are_reported_not_applied() -> None:
    store: dict[str, bytes] = {}
    out = processor().process([raw(1, event_time=NOW), raw(2, event_time=NOW - 10 * DAY)], store.get)
    assert out.counts == {"applied": 1, "redelivered": 0, "duplicate": 0, "late": 1, "dead": 0}
    ((cid, late),) = out.late
    assert late["lateness_ms"] == 10 * DAY and late["event_id"] == "e2"


def test_tiers_rank_each_customer_once_and_survive_a_rebuild() -> None:
    store: dict[str, bytes] = {}
    p = processor()
    # 10 customers with profits 1..10 (x2: the second batch moves each customer, it must not count twice)
    for _ in range(2):
        batch = [raw(100 * c + len(store), customer_id=f"c{c}", amount=10.0 * c) for c in range(1, 11)]
        store.update(p.process(batch, store.get).states)
    assert p.population.size("profitability") == 10
    rebuilt = processor()
    rebuilt.rebuild_population(store.values())
    assert rebuilt.population.size("profitability") == 10
    out = rebuilt.process(
        [raw(5000, customer_id="c10", amount=1.0), raw(5001, customer_id="c1", amount=1.0)], store.get
    )
    tiers = {cid: s["value_tier"] for cid, s in out.scores}
    assert tiers == {"c10": "A", "c1": "C"}
    assert {cid: s["rfm_f"] for cid, s in out.scores} == {"c10": 3, "c1": 3}  # same frequency: mid-rank


def test_a_first_batch_holding_every_customer_is_ranked_against_itself() -> None:
    # A replay into a fresh worker can fit in one batch: its customers must not be ranked against an empty population.
    batch = [raw(c, customer_id=f"c{c}", amount=10.0 * c) for c in range(1, 21)]
    out = processor().process(batch, {}.get)
    tiers = {cid: s["value_tier"] for cid, s in out.scores}
    assert tiers["c20"] == "A" and tiers["c13"] == "B" and tiers["c1"] == "C"  # top 20%, next 30%, the rest
    assert {tiers[f"c{c}"] for c in range(1, 21)} == {"A", "B", "C"}
    # The same customers in the other order: the same ranks (read once the whole batch has moved).
    again = processor().process(batch[::-1], {}.get)
    assert {cid: s["profit_percentile"] for cid, s in again.scores} == {
        cid: s["profit_percentile"] for cid, s in out.scores
    }


def test_a_cancellation_request_from_a_tier_a_customer_raises_one_alert_per_episode() -> None:
    store: dict[str, bytes] = {}
    p = processor()
    store.update(p.process([raw(c, customer_id=f"c{c}", amount=10.0 * c) for c in range(1, 11)], store.get).states)
    cancel = raw(50, kind="contacts", customer_id="c10", reason="cancellation_request")
    out = p.process([cancel], store.get)
    assert [(cid, a["rule"]) for cid, a in out.alerts] == [("c10", "cancellation_request")]
    alert = out.alerts[0][1]
    assert alert["episode"].startswith("c10:cancellation_request:") and alert["reasons"]
    store.update(out.states)
    again = p.process([raw(51, kind="contacts", customer_id="c10", reason="complaint")], store.get)
    assert again.alerts == []  # the episode is open: no second alert


def churn_cfg() -> Config:
    return CFG.replace(churn_snapshot_every_days=30.0, churn_silence_days=90.0, allowed_lateness_s=86400.0)


def test_purchases_and_silence_mature_churn_labels_once() -> None:
    store: dict[str, bytes] = {}
    p = BatchProcessor(churn_cfg(), CODEC, {k: k for k in ("transactions", "contacts", "payments")})
    t0 = NOW - 400 * DAY
    buy = lambda off, cid, day: raw(off, customer_id=cid, event_time=t0 + day * DAY)  # noqa: E731
    store.update(p.process([buy(1, "loyal", 0), buy(2, "silent", 0)], store.get).states)
    # 'loyal' buys again 20 days later: its day-0 snapshot is a 0 at once
    out = p.process([buy(3, "loyal", 20)], store.get)
    store.update(out.states)
    assert [(c, pair["label"], pair["snapshot_ms"]) for c, pair in out.labels] == [("loyal", 0, t0)]
    assert set(out.labels[0][1]["features"]) >= {"recency_days", "frequency", "purchases_90d"}
    # stream time moves on through 'loyal' alone: the silent customer's deadline passes without any event of its
    assert p.due() == []
    store.update(p.process([buy(4, "loyal", 95)], store.get).states)
    assert p.due() == ["silent"]
    matured = BatchOutput()
    store["silent"] = p.mature("silent", store["silent"], matured) or store["silent"]
    assert [(c, pair["label"], pair["label_ms"]) for c, pair in matured.labels] == [("silent", 1, t0 + 90 * DAY)]
    again = BatchOutput()
    assert p.mature("silent", store["silent"], again) is None and again.labels == []  # once


def test_a_rebuilt_worker_finds_the_deadlines_in_the_table() -> None:
    store: dict[str, bytes] = {}
    cfg = churn_cfg()
    p = BatchProcessor(cfg, CODEC, {k: k for k in ("transactions", "contacts", "payments")})
    t0 = NOW - 400 * DAY
    store.update(p.process([raw(1, customer_id="quiet", event_time=t0)], store.get).states)
    fresh = BatchProcessor(cfg, CODEC, {k: k for k in ("transactions", "contacts", "payments")})
    fresh.rebuild_deadlines(store.items())
    fresh.partition_times[("transactions", 0)] = (t0 + 200 * DAY, time.monotonic())
    assert fresh.due() == ["quiet"]


def test_labels_wait_for_the_slowest_active_partition_not_for_an_idle_one() -> None:
    p = processor()
    p.partition_times = {("transactions", 0): (100 * DAY, 1000.0), ("transactions", 1): (40 * DAY, 1000.0)}
    assert p.watermark(now=1001.0) == 40 * DAY  # partition 1 lags: it may still hold a purchase
    assert p.watermark(now=1000.0 + CFG.idle_partition_s + 1) == 100 * DAY  # all idle: the latest
    p.partition_times[("transactions", 0)] = (100 * DAY, 1020.0)
    assert p.watermark(now=1021.0) == 100 * DAY  # partition 1 idle for 21 s: left out


class _Feed:
    def __init__(self, **models: tuple[dict, bytes]) -> None:
        self.models = models

    def get(self, kind: str) -> tuple[dict, bytes] | None:
        return self.models.get(kind)


def test_clv_is_scored_for_the_batch_and_ranks_the_value_tiers() -> None:
    bg = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 3.0}
    feed = _Feed(
        clv=({"kind": "clv", "version": 3, "bgnbd": bg, "gamma_gamma": {"p": 6.0, "q": 4.0, "gamma": 15.0}}, b"")
    )
    p = BatchProcessor(CFG, CODEC, {k: k for k in ("transactions", "contacts", "payments")}, feed)  # type: ignore[arg-type]
    store: dict[str, bytes] = {}
    t0 = NOW - 300 * DAY
    for c in range(1, 11):  # customer c buys on c distinct days: more purchases, more CLV
        batch = [raw(100 * c + d, customer_id=f"c{c}", event_time=t0 + d * 7 * DAY, amount=20.0) for d in range(c)]
        store.update(p.process(batch, store.get).states)
    out = p.process(
        [raw(5000, customer_id="c10", event_time=t0 + 80 * DAY), raw(5001, customer_id="c1", event_time=t0 + 80 * DAY)],
        store.get,
    )
    scores = dict(out.scores)
    assert scores["c10"]["clv"] > scores["c1"]["clv"] > 0 and scores["c10"]["clv_params_version"] == 3
    assert 0 < scores["c10"]["p_alive"] <= 1 and scores["c10"]["expected_purchases"] > 0
    assert (scores["c10"]["value_tier"], scores["c1"]["value_tier"]) == ("A", "C")
    assert p.population.size("clv") == 10  # each customer once, although scored twice


def test_a_new_clv_model_re_ranks_every_customer_under_it() -> None:
    bg = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 3.0}
    feed = _Feed(clv=({"kind": "clv", "version": 1, "bgnbd": bg, "gamma_gamma": {}}, b""))
    p = BatchProcessor(CFG, CODEC, {k: k for k in ("transactions", "contacts", "payments")}, feed)  # type: ignore[arg-type]
    store: dict[str, bytes] = {}
    store.update(p.process([raw(c, customer_id=f"c{c}", amount=5.0 * c) for c in range(1, 21)], store.get).states)
    feed.models["clv"] = ({"kind": "clv", "version": 2, "bgnbd": {**bg, "r": 2.0}, "gamma_gamma": {}}, b"")
    p.start_batch()
    assert p.clv_rebuild  # the worker rebuilds from its table before the batch
    p.rebuild_population(store.values())
    assert not p.clv_rebuild and p.population.size("clv") == 20


def test_the_watermark_follows_partition_times_however_they_change() -> None:
    p = processor()
    now = time.monotonic()
    p.partition_times = {("transactions", 0): (100 * DAY, now), ("transactions", 1): (40 * DAY, now)}
    assert p.watermark() == 40 * DAY
    p.partition_times[("transactions", 1)] = (60 * DAY, now)  # set directly, as a rebuild or a test does
    assert p.watermark() == 60 * DAY
    p.partition_times[("transactions", 1)] = (60 * DAY, now - CFG.idle_partition_s - 1)  # partition 1 went idle
    assert p.watermark() == 100 * DAY
    assert p.watermark(now=now - 10 * CFG.idle_partition_s) == 60 * DAY  # an explicit time is never cached


def test_a_batch_is_churn_scored_as_one_customer_at_a_time_would_be() -> None:
    from scoring.churn import ChurnModel
    from streams.processor import churn_inputs, pack_churn_blob

    model = ChurnModel()
    for i in range(400):
        model.learn_one(
            {"recency_days": float(i % 100), "frequency": float(i % 5), "spend_30d": i % 7 * 10.0}, int(i % 100 > 60)
        )
    feed = _Feed(churn=({"kind": "churn", "version": 4}, pack_churn_blob(model.to_bytes(), b"", {})))
    p = BatchProcessor(CFG, CODEC, {k: k for k in ("transactions", "contacts", "payments")}, feed)  # type: ignore[arg-type]
    batch = [raw(c, customer_id=f"c{c}", amount=3.0 * c, event_time=NOW - c * 7 * DAY) for c in range(1, 40)]
    out = p.process(batch, {}.get)
    assert len(out.scores) == 39
    for _, scores in out.scores:
        p_churn, reasons = model.predict_with_reasons(churn_inputs(scores), 3)
        assert (scores["churn_probability"], scores["churn_reasons"]) == (p_churn, reasons)
        assert scores["churn_model_version"] == 4
