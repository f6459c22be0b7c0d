"""What a restore reads back from ClickHouse (cvm/restore.py), on the real chDB engine: every event once, exactly as
it was published, in the order it was first read."""

from __future__ import annotations

import random
import time
from typing import Any

from cvm.codec import Codec
from cvm.config import Config
from cvm.epoch import Epoch
from cvm.restore import History, Registry
from sinks.clickhouse import ClickHouse
from sinks.writer import Writer

DAY = 86_400_000
T0 = int(time.time() * 1000) - 400 * DAY


def _tx(cid: str, eid: str, t: int, amount: float, **extra: Any) -> dict[str, Any]:
    record = {"event_id": eid, "customer_id": cid, "event_time": t, "amount": amount, "currency": "EUR"}
    record.update(gross_margin=None, channel="web", category="books")
    record.update(extra)
    return record


def _contact(cid: str, eid: str, t: int) -> dict[str, Any]:
    record = {"event_id": eid, "customer_id": cid, "event_time": t, "channel": "phone", "reason": "complaint"}
    record.update(handle_time_s=61.5, resolved=False, cost=None)
    return record


def _payment(cid: str, eid: str, t: int) -> dict[str, Any]:
    record = {"event_id": eid, "customer_id": cid, "event_time": t, "invoice_id": "i-" + eid, "amount_due": 20.0}
    record.update(amount_paid=19.99, due_date=t - DAY, paid_date=None, status="late")
    return record


def _write(cfg: Config, ch: ClickHouse, epoch: Epoch, published: list[tuple[str, int, int, dict[str, Any]]]) -> None:
    codec, writer = Codec(), Writer(cfg, ch, epoch=epoch)
    for kind, partition, offset, record in published:
        assert writer.add(cfg.topic(kind), partition, offset, codec.encode(kind, record))
    assert writer.flush()


def test_every_event_comes_back_once_as_published_in_its_partition_order(cfg: Config, ch: ClickHouse) -> None:
    rng = random.Random(7)
    first: list[tuple[str, int, int, dict[str, Any]]] = []
    offsets = {(kind, p): 0 for kind in ("transactions", "contacts", "payments") for p in range(2)}
    for i in range(300):  # per partition out of order in event time now and then, as upstream sends them
        kind = rng.choice(["transactions", "transactions", "contacts", "payments"])
        cid = f"c{rng.randrange(12)}"
        partition = int(cid[1:]) % 2
        t = T0 + i * 3_600_000 - rng.choice([0, 0, 0, 2 * DAY])
        if kind == "transactions":
            record = _tx(cid, f"e{i}", t, round(rng.uniform(-20, 300), 2))
        elif kind == "contacts":
            record = _contact(cid, f"e{i}", t)
        else:
            record = _payment(cid, f"e{i}", t)
        first.append((kind, partition, offsets[(kind, partition)], record))
        offsets[(kind, partition)] += 1
    rng.shuffle(first)  # the order of the writes to ClickHouse does not matter: offsets do
    _write(cfg, ch, Epoch(1, "one"), first)
    again = [first[0], first[1]]  # a broker later: the same events again (upstream duplicates), and new ones
    later = [(k, p, o + 1000, r) for k, p, o, r in again]
    later.append(("transactions", 0, 0, _tx("c0", "late-life", T0 + 500 * 3_600_000, 1.25, gross_margin=0.5)))
    _write(cfg, ch, Epoch(2, "two"), later)

    history = list(History(ch))
    assert len(history) == 301  # the second copies are not there: the first copy read is kept
    by_id = {record["event_id"]: (kind, record) for kind, record in history}
    for kind, _, _, record in first:
        assert by_id[record["event_id"]] == (kind, record)  # every Avro field as published
    assert history[-1] == ("transactions", later[-1][3])  # the later epoch after the earlier one
    # Within a (kind, partition) of an epoch, the order of the offsets; across them, event time advances together.
    order = {(k, r["event_id"]): (p, o) for k, p, o, r in first}
    seen: dict[tuple[str, int], int] = {}
    for kind, record in history[:-1]:
        partition, offset = order[(kind, record["event_id"])]
        assert offset > seen.get((kind, partition), -1)
        seen[(kind, partition)] = offset


def test_the_next_epoch_is_above_every_epoch_clickhouse_knows(cfg: Config, ch: ClickHouse) -> None:
    registry = Registry(ch)
    assert registry.next_number() == 1 and not registry.any()
    _write(cfg, ch, Epoch(4, "four"), [("payments", 0, 0, _payment("c1", "p1", T0))])
    assert registry.next_number() == 5 and registry.counts() == {"transactions": 0, "contacts": 0, "payments": 1}
    registry.record(Epoch(9, "nine"), "publishing")
    registry.record(Epoch(9, "nine"), "restored", events=12, seconds=1.5, boundaries='{"t:0": 12}')
    assert registry.next_number() == 10 and registry.any()
    found = registry.find("nine")
    assert found is not None
    assert (found["state"], found["events"], found["boundaries"]) == ("restored", 12, '{"t:0": 12}')
    assert registry.find("ten") is None
