"""The worker's batch loop (streams.scorer.Scorer) on in-memory clients: the order of its writes, ticks on stream
time, re-scoring of silent customers, labels and alerts at ticks, models of their stream time, re-keying, the fate of
every record, and the same results whatever the batch sizes and the interleaving of partitions."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cvm.codec import Codec
from cvm.config import Config
from cvm.kafka import encode_model
from scoring.churn import ChurnModel
from scoring.population import Population
from scoring.state import CustomerState
from streams.models import pack_churn
from streams.partitions import CLOCK_KEY
from streams.score import ranked
from streams.scorer import Scorer
from tests.conftest import MODEL_KEY
from tests.streams import fakes
from tests.streams.fakes import DAY, Feed, Log, Table, drain

CODEC = Codec()
T0 = 1_700_006_400_000 // DAY * DAY - 400 * DAY  # a day boundary, 400 days before the simulated "now"
CFG = Config.load(
    env={
        "CVM_TICK_S": "86400",
        "CVM_MODEL_EVERY_DAYS": "7",
        "CVM_IDLE_PARTITION_S": "10",
        "CVM_PARTITIONS": "2",
        "CVM_WORKER_BATCH": "1000",
        "CVM_ALLOWED_LATENESS_S": "86400",
        "CVM_CHURN_SILENCE_DAYS": "30",
        "CVM_CHURN_SNAPSHOT_EVERY_DAYS": "10",
        "CVM_MODEL_KEY": MODEL_KEY,
    }
)
BG = {"r": 0.5, "alpha": 6.0, "a": 0.7, "b": 3.0}
GG = {"p": 6.0, "q": 4.0, "gamma": 15.0}


def publish(log: Log, kind: str, cid: str, day: float, eid: str, key: bytes | None = b"", **fields: object) -> None:
    rec: dict[str, object] = {"event_id": eid, "customer_id": cid, "event_time": T0 + int(day * DAY)}
    if kind == "transactions":
        rec["amount"] = 10.0
    elif kind == "contacts":
        rec.update(channel="email", reason="information")
    else:
        rec.update(invoice_id=eid, amount_due=5.0, amount_paid=5.0, status="paid", due_date=rec["event_time"])
    rec.update(fields)
    log.append(CFG.topic(kind), cid.encode() if key == b"" else key, CODEC.encode(kind, rec))


def scores(log: Log, scored_by: str | None = None) -> list[dict]:
    out = [json.loads(v) for v in log.values(CFG.topic("customer-scores"))]
    return [m for m in out if scored_by is None or m["scored_by"] == scored_by]


def history(log: Log, in_time_order: bool = True) -> None:
    """Ten customers over 120 days: steady buyers, one who goes silent, contacts, a cancellation, a late event.

    Published in event-time order as a replay does, or customer by customer (every partition far out of time order).
    """
    events: list[tuple[float, str, str, str, dict]] = []
    for c in range(10):
        cid = f"c{c}"
        last = 120 if c != 3 else 20  # c3 goes silent after day 20
        for d in range(0, last, 3 + c):
            events.append((d + 0.3, "transactions", cid, f"t{c}-{d}", {"amount": 5.0 + 4 * c}))
        reason = "complaint" if c % 2 else "information"
        events.append((10.0 + c, "contacts", cid, f"k{c}", {"reason": reason}))
        events.append((15.0 + c, "payments", cid, f"p{c}", {}))
    events.append((60.5, "contacts", "c9", "cancel", {"reason": "cancellation_request"}))
    if in_time_order:
        events.sort(key=lambda e: e[0])
    for day, kind, cid, eid, fields in events:
        publish(log, kind, cid, day, eid, **fields)
    publish(log, "transactions", "c1", 50.0, "straggler")  # far behind c1's stream time: late


def counter_by(name: str, label: str) -> dict[str, float]:
    """A counter's values in the process's registry, by one of its labels."""
    return {
        sample.labels[label]: sample.value
        for family in REGISTRY.collect()
        if family.name == name
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def feed_with_models() -> Feed:
    feed = Feed(CFG)
    feed.offer(encode_model({"kind": "clv", "version": 1, "valid_from": 0, "bgnbd": BG, "gamma_gamma": GG}))
    model = ChurnModel()
    for i in range(300):
        model.learn_one({"silence_gaps": float(i % 90) / 10, "frequency": float(i % 6)}, int(i % 90 > 40))
    blob = pack_churn([model.to_bytes(), model.to_bytes()], [b"", b""])
    feed.offer(encode_model({"kind": "churn", "version": 1, "valid_from": T0 + 30 * DAY}, blob))
    return feed


def run(seed: int, batch: int, in_time_order: bool = True) -> tuple[Log, Scorer]:
    log = Log(CFG.partitions)
    history(log, in_time_order)
    s = fakes.scorer(CFG.replace(worker_batch=batch), log, seed=seed, feed=feed_with_models())
    drain(s)
    return log, s


def test_every_record_meets_one_fate_and_the_fates_add_up() -> None:
    log, s = run(seed=1, batch=1000)
    consumed = Counter({(t, p): len(part) for (t, p), part in log.records.items() if t in s.sources})
    fates: Counter = Counter()
    for (t, p, _), n in s.fates.items():
        fates[(t, p)] += n
    assert fates == consumed
    totals = Counter()
    for (_, _, fate), n in s.fates.items():
        totals[fate] += n
    assert totals["late"] == 1 and totals["applied"] == sum(consumed.values()) - 1


@pytest.mark.parametrize("in_time_order", [True, False])
def test_ticks_alerts_labels_and_final_states_do_not_depend_on_batches_or_interleaving(in_time_order: bool) -> None:
    results = []
    for seed, batch in ((1, 1000), (2, 7), (3, 1), (4, 64)):
        log, s = run(seed, batch, in_time_order)
        rows = scores(log, "tick") + scores(log, "idle")
        ticks = sorted(json.dumps({**m, "updated_at": None}, sort_keys=True) for m in rows)  # all but the write time
        alerts = sorted(log.values(CFG.topic("alerts")))
        labels = sorted(log.values(CFG.topic("churn-labels")))
        labels = [v for v in labels if b'"progress"' not in v]
        states = {k: v for p in s.table.partitions.values() for k, v in p.items()}
        results.append((ticks, alerts, labels, states, final_rows(log)))
    first = results[0]
    assert first[0] and first[2], "the history must produce tick scores and labels"
    for other in results[1:]:
        assert other[0] == first[0]
        assert other[1] == first[1]
        assert other[2] == first[2]
        assert other[3] == first[3]
        assert other[4] == first[4]  # customers FINAL


def test_silent_customers_are_rescored_as_stream_time_passes() -> None:
    log, _ = run(seed=1, batch=1000)
    silent = [m for m in scores(log, "tick") if m["customer_id"] == "c3" and m["as_of"] > T0 + 25 * DAY]
    assert len(silent) >= 5, "c3 bought last on day 18: it must be re-scored without events of its own"
    recency = [m["recency_days"] for m in silent]
    p_alive = [m["p_alive"] for m in silent]
    assert recency == sorted(recency) and p_alive == sorted(p_alive, reverse=True) and p_alive[0] > p_alive[-1]
    assert {m["last_event_time"] for m in silent} == {silent[0]["last_event_time"]}  # no event of its own
    idle = scores(log, "idle")  # the stream went idle: the customers behind the last tick are scored as of it
    assert idle and {m["as_of"] for m in idle} == {T0 + 119 * DAY}  # the tick before the latest event (day 119.3)
    assert all(m["as_of"] >= T0 + 119 * DAY for m in final_rows(log).values())


def test_labels_mature_at_ticks_once_and_carry_the_tick_they_became_known() -> None:
    log, _ = run(seed=1, batch=1000)
    labels = [json.loads(v) for v in log.values(CFG.topic("churn-labels"))]
    pairs = [m for m in labels if m.get("kind") != "progress"]
    assert len({(m["customer_id"], m["snapshot_ms"], m["head"]) for m in pairs}) == len(pairs)  # once each per head
    silent = [m for m in pairs if m["customer_id"] == "c3" and m["label"] == 1]
    assert silent and all(m["known_ms"] % DAY == 0 and m["known_ms"] > m["label_ms"] for m in silent)
    progress = [m for m in labels if m.get("kind") == "progress"]
    assert progress and max(int(t) for m in progress for t in m["partitions"].values()) >= T0 + 119 * DAY


def test_alerts_are_raised_at_ticks_as_of_the_tick() -> None:
    log, _ = run(seed=1, batch=1000)
    alerts = [json.loads(v) for v in log.values(CFG.topic("alerts"))]
    cancel = [a for a in alerts if a["rule"] == "cancellation_request"]
    assert [a["customer_id"] for a in cancel] == ["c9"]
    assert cancel[0]["alert_time"] == T0 + 61 * DAY  # the tick closing the day of the request


def test_outputs_then_table_then_commit() -> None:
    log = Log(CFG.partitions)
    history(log)
    s = fakes.scorer(CFG, log, feed=feed_with_models())
    drain(s)
    journal = [j for j in log.journal if j[0] != "consume"]
    commits = [i for i, j in enumerate(journal) if j[0] == "commit"]
    assert commits
    start = 0
    for c in commits:
        step = [name for name, _ in journal[start:c]]
        if "table.put" in step:
            first_put = step.index("table.put")
            assert "producer.flush" in step[:first_put] and "learn.flush" in step[:first_put]
            after = journal[start + first_put : c]
            assert all(n != "producer.produce" or topic == "cvm-customers-changelog" for n, topic in after)
            assert step[-1].endswith("flush")
        start = c + 1


def test_each_scoring_hands_its_messages_to_the_producer_before_the_next() -> None:
    """A batch whose ticks re-score the whole table (a new model version, in a backlog) held every score message as a
    dict until its end, and every candidate its own: about 4 KB a scoring, hundreds of MB at 140,000 customers. Each
    scoring now sends its scores and alerts on (the producer holds them as bytes until the batch's flush)."""
    log = Log(CFG.partitions)
    history(log)
    s = fakes.scorer(CFG, log, feed=feed_with_models())
    assess, seen = s._assess, []

    def checked(cands: list, scored_by: str, models: Any, **at: Any) -> None:
        sent = len(log.values(CFG.topic("customer-scores")))
        assess(cands, scored_by, models, **at)
        seen.append(
            (
                len(log.values(CFG.topic("customer-scores"))) - sent - len(cands),  # every scoring sent, now
                len(s.out.scores) + len(s.out.alerts),  # nothing left behind as dicts
                sum(c.scores is not None for c in s.entries.values()),  # nor on the batch's candidates
            )
        )

    s._assess = checked  # type: ignore[method-assign]
    drain(s)
    assert len(seen) > 10 and set(seen) == {(0, 0, 0)}
    assert log.values(CFG.topic("alerts"))  # alerts were raised (and sent) along the way


def test_records_held_for_a_later_tick_are_not_committed() -> None:
    log = Log(1)
    cfg = CFG.replace(partitions=1)
    for d in range(5):
        publish(log, "transactions", "a", d, f"a{d}")
    publish(log, "contacts", "a", 0.5, "k0")  # contacts stop at day 0.5: the tick of day 1 waits for them
    s = fakes.scorer(cfg, log)
    s.step()  # joins: what the poll of the assignment brought is read again from the committed offsets
    s.step()
    s.monotonic.now += 2  # type: ignore[attr-defined]  # the sources that delivered nothing had their second
    s.step()
    committed = s.consumer.committed_offsets
    assert committed[(cfg.topic("transactions"), 0)] == 1  # day 0 applied, days 1-4 held
    assert (cfg.topic("transactions"), 0) in s.consumer.paused


def test_models_of_a_tick_wait_for_the_learner() -> None:
    log = Log(CFG.partitions)
    for d in range(20):
        publish(log, "transactions", "a", d + 0.5, f"a{d}")
    feed = Feed(CFG)
    feed.offer(encode_model({"kind": "clock", "through": None, "grid_ms": 7 * DAY, "seq": 1}))
    s = fakes.scorer(CFG.replace(model_wait_s=1e9), log, feed=feed)
    drain(s)
    assert not scores(log, "tick")  # the learner has not said where it is: no tick can be scored
    progress = [json.loads(v) for v in log.values(CFG.topic("churn-labels"))]
    assert progress and progress[-1]["kind"] == "progress"
    feed.offer(encode_model({"kind": "clock", "through": T0 + 28 * DAY, "grid_ms": 7 * DAY, "seq": 2}))
    drain(s)
    assert scores(log, "tick")


def test_records_keyed_otherwise_are_rekeyed_and_applied_once() -> None:
    log = Log(CFG.partitions)
    for i in range(30):
        key = [None, f"order-{i}".encode(), b""][i % 3]
        publish(log, "transactions", "c42", i * 0.1, f"e{i}", key=key, amount=1.0)
    s = fakes.scorer(CFG, log)
    drain(s)
    data = s.table.get(1 if s.table.get(1, b"c42") else 0, b"c42")
    assert data is not None and CustomerState.from_bytes(data).revenue_cents == 3000
    fates = Counter()
    for (t, _, fate), n in s.fates.items():
        fates[(t.split("-")[-1], fate)] += n
    assert fates[("transactions", "rekeyed")] == 20 and fates[("rekey", "applied")] == 20
    assert fates[("transactions", "applied")] == 10


def test_a_restart_from_the_table_and_committed_offsets_counts_nothing_twice() -> None:
    log = Log(CFG.partitions)
    history(log)
    s = fakes.scorer(CFG, log, feed=feed_with_models())
    drain(s)
    before = {k: v for p in s.table.partitions.values() for k, v in p.items()}
    again = fakes.scorer(CFG, log, feed=feed_with_models(), table=Table(log, s.table.partitions))  # offsets from 0
    drain(again)
    after = {k: v for p in again.table.partitions.values() for k, v in p.items()}
    for key, data in before.items():
        if key != CLOCK_KEY:
            a, b = CustomerState.from_bytes(data), CustomerState.from_bytes(after[key])
            assert (a.version, a.revenue_cents, a.n_contacts) == (b.version, b.revenue_cents, b.n_contacts)
    assert sum(n for (_, _, fate), n in again.fates.items() if fate == "redelivered") > 100


@pytest.mark.parametrize("batch", [1000, 5])
def test_a_churn_model_version_is_used_from_its_stream_time(batch: int) -> None:
    log, _ = run(seed=5, batch=batch)
    ticks = scores(log, "tick")
    before = [m for m in ticks if m["as_of"] <= T0 + 30 * DAY]
    after = [m for m in ticks if m["as_of"] > T0 + 30 * DAY]
    assert before and after
    assert all(m.get("churn_probability") is None for m in before)
    assert all(m["churn_model_version"] == 1 for m in after)


def test_a_new_model_version_reaches_every_customer_within_the_spread_a_share_at_each_tick() -> None:
    """Scoring the whole population at the version's tick stalled a worker holding 140,000 customers for ~8 s (the
    bench's p99 latency: 13 s): each customer has its slot among the ticks of CVM_MODEL_RESCORE_SPREAD_S instead."""
    import zlib

    log = Log(CFG.partitions)
    history(log)
    spread = 10
    cfg = CFG.replace(model_rescore_spread_s=spread * 86400.0)
    drain(fakes.scorer(cfg, log, seed=3, feed=feed_with_models()))
    first: dict[str, int] = {}
    for m in scores(log, "tick"):
        if m.get("churn_model_version") == 1:
            first.setdefault(m["customer_id"], m["as_of"])
    assert len(first) == 10  # every customer, under the new version
    version_tick = min(first.values())  # the first tick after its valid_from (day 30)
    assert version_tick == T0 + 31 * DAY
    for cid, as_of in first.items():
        slot = version_tick + zlib.crc32(cid.encode()) % spread * DAY
        assert version_tick <= as_of <= slot, (cid, as_of, slot)  # at its slot, or earlier for an event or a timer
    assert sum(1 for as_of in first.values() if as_of == version_tick) < 10  # not everyone at the version's tick
    assert len(set(first.values())) > 2


def test_versions_of_both_kinds_at_one_tick_give_each_customer_one_slot(caplog: pytest.LogCaptureFixture) -> None:
    """cvm_rescored_customers_total counted a customer once per kind when a CLV and a churn version came at the same
    grid point, as the learner publishes them: the bench's model_rescorings_per_event read twice the scorings."""

    def slots() -> dict[str, float]:
        return counter_by("cvm_rescored_customers", "kind")

    feed = feed_with_models()
    model = ChurnModel()
    model.learn_one({"silence_gaps": 1.0}, 1)
    blob = pack_churn([model.to_bytes(), model.to_bytes()], [b"", b""])
    valid_from = T0 + 60 * DAY
    feed.offer(encode_model({"kind": "clv", "version": 2, "valid_from": valid_from, "bgnbd": BG, "gamma_gamma": GG}))
    feed.offer(encode_model({"kind": "churn", "version": 2, "valid_from": valid_from}, blob))
    log = Log(CFG.partitions)
    history(log)
    before = slots()
    with caplog.at_level("INFO", logger="cvm.worker"):
        drain(fakes.scorer(CFG, log, seed=4, feed=feed))
    counted = {k: v - before.get(k, 0.0) for k, v in slots().items() if v > before.get(k, 0.0)}
    given = [int(r.args[2]) for r in caplog.records if r.getMessage().startswith("model versions")]  # type: ignore[index]
    assert counted.get("clv+churn") == 10  # the ten customers of the history, once each
    assert sum(counted.values()) == sum(given), (counted, given)


class StaleConsumer(fakes.Consumer):
    """Its first poll after the assignment also returns records fetched before it, ahead of the committed offset
    (what a client may hold when a rebalance comes in the middle of a fetch)."""

    def consume(self, num_messages: int = 1, timeout: float = 0) -> list:
        first = not self.assigned
        out = super().consume(num_messages, timeout)
        if first:
            ahead = [m for (t, _), part in self.log.records.items() if t.endswith("transactions") for m in part[5:9]]
            out = ahead + out
        return out


def test_records_fetched_before_an_assignment_do_not_make_a_hole() -> None:
    log = Log(CFG.partitions)
    for i in range(40):
        publish(log, "transactions", f"c{i % 3}", i * 0.05, f"e{i}")
    s = fakes.scorer(CFG, log)
    s.consumer = StaleConsumer(log)
    s.subscribe()
    drain(s)
    revenue = sum(
        CustomerState.from_bytes(v).revenue_cents for p in s.table.partitions.values() for k, v in p.items()
        if k != CLOCK_KEY
    )  # fmt: skip
    assert revenue == 40 * 1000


def test_the_worker_s_cpu_is_charged_to_its_stages() -> None:
    """Every CPU second of the batch loop goes to one stage of cvm_worker_stage_seconds (cvm bench reports them)."""

    def stages() -> dict[str, float]:
        return counter_by("cvm_worker_stage_seconds", "stage")

    before = stages()
    log = Log(CFG.partitions)
    history(log)
    s = fakes.scorer(CFG, log, feed=feed_with_models())
    cpu = time.thread_time()
    drain(s)
    cpu = time.thread_time() - cpu
    charged = {k: v - before.get(k, 0.0) for k, v in stages().items()}
    for stage in ("consume", "decode", "fold", "features", "score", "models", "emit", "changelog", "commit"):
        assert charged.get(stage, 0.0) > 0, (stage, charged)
    assert 0.7 * cpu <= sum(charged.values()) <= cpu * 1.01 + 0.01, (cpu, charged)


def test_stage_cpu_counts_the_thread_that_steps_not_the_one_that_built_the_scorer() -> None:
    """The worker builds its Scorer on one thread and steps it on its Kafka thread: thread CPU times of two threads
    are not comparable (a negative increment crashed every worker of cvm bench)."""
    import threading

    log = Log(CFG.partitions)
    history(log)
    busy = time.thread_time() + 0.3
    while time.thread_time() < busy:  # this thread has used more CPU than the stepping thread will have
        pass
    s = fakes.scorer(CFG, log, feed=feed_with_models())
    errors: list[BaseException] = []

    def run() -> None:
        try:
            s.step()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors, errors


def test_live_traffic_that_keeps_coming_is_not_an_idle_stream() -> None:
    """Each partition delivers every 0.6 s, read to its end at once (a worker that keeps up), and every fourth batch
    brings nothing (a 0.3 s lull): no source is idle, so no idle scoring re-scores everyone mid-stream. Once the
    records stop, the stream is idle within a second or so and the silent customer is scored as of the last tick. (A
    source that had once read to the end counted as idle a second later, however much it delivered since: in the
    bench's live traffic, 2,100 events/s, a lull of a batch set off idle scorings of ~18,000 customers that held the
    worker ~2 s.)"""
    log = Log(CFG.partitions)
    publish(log, "transactions", "c5", 98.5, "before")  # scored at tick 99, then silent: behind the next tick
    s = fakes.scorer(CFG, log, feed=feed_with_models())
    clock = s.monotonic
    assert isinstance(clock, fakes.Clock)
    sides = (("c0", "c4", "c9"), ("c1", "c2", "c3"))  # customers of partition 0, of partition 1
    for step in range(40):  # 12 s of wall time, each partition every other step; 40 s of event time
        for kind in ("transactions", "contacts", "payments"):
            for cid in sides[step % 2] if step % 4 != 3 else ():
                publish(log, kind, cid, 100 + step / 86400, f"{kind}-{cid}-{step}")
        s.step()
        clock.now += 0.3
    assert s.counters["idle"] == 0, s.counters
    for _ in range(10):  # the stream stops
        s.step()
        clock.now += 0.3
    assert s.counters["idle"] == 1, s.counters  # c5, once, as of tick 100 (the others have events since)


def final_rows(log: Log) -> dict[str, dict]:
    """``customers FINAL``: each customer's score of the highest version, all but the write time."""
    best: dict[str, dict] = {}
    for m in scores(log):
        if m["customer_id"] not in best or m["version"] > best[m["customer_id"]]["version"]:
            best[m["customer_id"]] = m
    return {c: {**m, "updated_at": None} for c, m in best.items()}


def test_a_live_stream_with_lulls_gives_what_a_replay_of_it_gives() -> None:
    """Live, the history comes one event at a time and the stream goes idle after each (a quiet shop); replayed, it
    comes at once. Tick scores, alerts, labels and ``customers FINAL`` must be the same, and the idle scorings must
    not grow with the lulls. (Idle scorings moved the population and the states: later ticks ranked CLV against
    them, 7 of 10 final rows kept the as-of of an earlier lull, and the lulls made 823 idle scorings for 200
    events.)"""
    log = Log(CFG.partitions)
    history(log)
    replayed = fakes.scorer(CFG, log, feed=feed_with_models())
    drain(replayed)
    published: list[tuple[str, bytes | None, bytes | None]] = []

    class Upstream(Log):  # the same history, as it was published, one record at a time
        def append(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None = None) -> Any:
            published.append((topic, key, value))
            return super().append(topic, key, value, partition)

    history(Upstream(CFG.partitions))
    live_log = Log(CFG.partitions)
    live = fakes.scorer(CFG, live_log, feed=feed_with_models())
    for topic, key, value in published:
        live_log.append(topic, key, value)
        for _ in range(3):  # the event, then a lull: every source idle
            live.step()
            live.monotonic.now += 11  # type: ignore[attr-defined]
    drain(live)

    def ticks(lg: Log) -> list[str]:
        return sorted(json.dumps({**m, "updated_at": None}, sort_keys=True) for m in scores(lg, "tick"))

    def labels(lg: Log) -> list[bytes]:
        return sorted(v for v in lg.values(CFG.topic("churn-labels")) if b'"progress"' not in v)

    assert ticks(live_log) == ticks(log)
    assert sorted(live_log.values(CFG.topic("alerts"))) == sorted(log.values(CFG.topic("alerts")))
    assert labels(live_log) == labels(log)
    assert final_rows(live_log) == final_rows(log)
    assert live.counters["idle"] <= replayed.counters["idle"] + 10 * 120, live.counters  # at most once a tick


@pytest.mark.parametrize(
    "step, target", [("features", "scoring.features.compute"), ("reasons", "streams.score.reasons")]
)
def test_a_customer_whose_scoring_raises_costs_that_customer_only(
    step: str, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug that raises for one customer's state must not stop the worker (it would crash at the same batch again
    after every restart): that customer keeps its last scores, counted and logged; the others are scored."""
    module, name = target.rsplit(".", 1)
    real = getattr(__import__(module, fromlist=[name]), name)

    def broken(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if (result if step == "features" else args[0])["avg_basket"] == 17.0:  # c3's, and no other customer's
            raise ValueError("math domain error")
        return result

    log = Log(CFG.partitions)
    history(log)
    monkeypatch.setattr(target, broken)
    failures = REGISTRY.get_sample_value("cvm_scoring_failures_total", {"step": step}) or 0.0
    s = fakes.scorer(CFG, log, seed=1, feed=feed_with_models())
    drain(s)
    by_customer = Counter(m["customer_id"] for m in scores(log))
    assert "c3" not in by_customer and set(by_customer) == {f"c{c}" for c in range(10)} - {"c3"}
    assert REGISTRY.get_sample_value("cvm_scoring_failures_total", {"step": step}) - failures >= 1
    consumed = sum(len(part) for (t, _), part in log.records.items() if t in s.sources)
    assert sum(n for (_, _, fate), n in s.fates.items() if fate == "applied") == consumed - 1  # the straggler: late


def test_a_churn_model_giving_a_wrong_number_of_results_costs_no_customer_its_score(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A model whose vectorised pass returns one result fewer than its rows (a bug in a head) must not stop the
    scoring call: the worker falls back to one customer at a time, as for a pass that raises."""
    from scoring.churn import ChurnModel

    real = ChurnModel.predict_many

    def short(self: ChurnModel, rows: Any, prepared: Any = None) -> list[float]:
        out = real(self, rows, prepared)
        return out[:-1] if len(rows) > 1 else out

    log = Log(CFG.partitions)
    history(log)
    monkeypatch.setattr(ChurnModel, "predict_many", short)
    s = fakes.scorer(CFG, log, seed=1, feed=feed_with_models())
    drain(s)
    under_model = [m for m in scores(log, "tick") if m["as_of"] >= T0 + 30 * DAY]  # the version's valid_from
    assert under_model and all(m["churn_probability"] is not None for m in under_model)
    assert {m["customer_id"] for m in scores(log)} == {f"c{c}" for c in range(10)}


@pytest.mark.parametrize(("every", "expected"), [(10.0, 3), (0.0, 0)])
def test_the_worker_gives_freed_memory_back_every_trim_interval(every: float, expected: int) -> None:
    """glibc kept the pages of every batch's freed blocks for good (a third of a bench worker's resident memory after
    the run): the worker hands them back every CVM_WORKER_TRIM_S of its monotonic clock, and never with 0."""
    log = Log(CFG.partitions)
    history(log)
    s = fakes.scorer(CFG.replace(worker_trim_s=every), log, feed=feed_with_models())
    clock = s.monotonic
    assert isinstance(clock, fakes.Clock)
    trims: list[float] = []

    def trim() -> bool:
        trims.append(clock.now)
        return True

    s.trimmer.trim = trim
    for _ in range(35):  # 35 s of batches
        s.step()
        clock.now += 1.0
    assert len(trims) == expected == s.trimmer.trims
    assert all(b - a >= every for a, b in zip(trims, trims[1:], strict=False))


def test_timers_drop_their_stale_entries_and_pop_as_before() -> None:
    """Each re-scoring moved a customer's timer and left the old heap entry behind: 457,000 entries for 139,000
    customers in the bench. The heap is rebuilt from the live timers when the stale ones outnumber them; what comes
    due, and in which order, is what a plain dict of timers gives."""
    import random

    from streams.clock import Timers

    rng = random.Random(7)
    timers, reference = Timers(), {}
    t = 0

    def home(cid: str) -> int:  # a timer's partition
        return int(cid[1:]) % 4

    for _ in range(200):
        for _ in range(500):
            cid = f"c{rng.randrange(3000)}"
            due = t + rng.randrange(1, 50_000)
            if rng.random() < 0.3:
                timers.earlier(cid, due, home(cid))
                if cid not in reference or due < reference[cid]:
                    reference[cid] = due
            elif rng.random() < 0.05:
                timers.set(cid, None, home(cid))
                reference.pop(cid, None)
            else:
                timers.set(cid, due, home(cid))
                reference[cid] = due
        t += 1_000
        expected = sorted((d, c) for c, d in reference.items() if d <= t)
        assert list(timers.pop_due(t).items()) == [(c, home(c)) for _, c in expected]
        for _, c in expected:
            del reference[c]
        assert len(timers) == len(reference)
        assert len(timers._heap) <= 2 * len(reference) + 1025
    assert timers.next_due() == min(reference.values())


def test_the_population_counts_each_customer_once_as_a_rebuild_from_the_table_does() -> None:
    """A customer the worker has never seen is in no bucket: its first scoring adds it and takes no one else out
    (it did: its empty state's profitability, 0.0, was taken out of the bucket of those at exactly 0)."""
    log = Log(CFG.partitions)
    for i in range(3):  # payments only: a profitability of exactly 0
        publish(log, "payments", f"z{i}", 1.0 + i / 10, f"zp{i}")
    for i in range(6):  # new customers after them
        publish(log, "transactions", f"b{i}", 2.0 + i, f"bt{i}")
    s = fakes.scorer(CFG, log, feed=feed_with_models())
    drain(s)
    states = [CustomerState.from_bytes(v) for p in s.table.partitions.values() for k, v in p.items() if k != CLOCK_KEY]
    rebuilt = Population()
    rebuilt.rebuild(ranked(state) for state in states)
    assert len(states) == 9
    assert {m: dict(c) for m, c in s.population.counts.items()} == {m: dict(c) for m, c in rebuilt.counts.items()}
    assert s.population.counts["profitability"][0] == 3
