"""The score contract (schemas/customer_score.avsc): its checks, and what today's worker emits held to it.

The last test is the worker side of the contract: every score message the batch processor emits passes
:meth:`ScoreContract.validate` (keys and value types), before any model, with a CLV model and with a churn model.
It drives the worker's own batch loop (``streams.scorer.Scorer``) on in-memory clients.
"""

from __future__ import annotations

import json

import pytest

from cvm.codec import Codec
from cvm.config import Config
from cvm.exceptions import BrokenContract
from schemas.scores import SCHEMA_PATH, ScoreContract

DAY = 86_400_000
T0 = 899_164_800_000  # 1998-06-30: history from before 2000 is history


def test_required_fields_have_no_default_and_optional_ones_default_to_null_or_empty() -> None:
    contract = ScoreContract.load()
    schema = json.loads(SCHEMA_PATH.read_text())
    for field in schema["fields"]:
        assert field.get("doc"), f"{field['name']} has no doc"
        if field["name"] in contract.defaults:
            assert field["default"] in (None, []), field["name"]
        else:
            assert not isinstance(field["type"], list), f"required {field['name']} must not be nullable"
    assert len(contract.fields) == len(schema["fields"]), "field names are unique"


def test_check_fills_drops_and_refuses() -> None:
    contract = ScoreContract.load()
    message = contract.example("c9")
    message["p_alive"] = 0.4
    out = contract.check(dict(message, extra_key=1, other=2))
    assert out["p_alive"] == 0.4 and out["clv"] is None and out["churn_reasons"] == [] and "extra_key" not in out
    assert dict(contract.unknown) == {"extra_key": 1, "other": 1}
    first, second = contract.check(contract.example()), contract.check(contract.example())
    assert first["churn_reasons"] is not second["churn_reasons"], "a fresh default per message"
    with pytest.raises(BrokenContract, match="with null version"):
        contract.check(dict(message, version=None))
    assert dict(contract.broken) == {"with null version": 1}


def test_validate_checks_the_types() -> None:
    contract = ScoreContract.load()
    contract.validate(contract.example())
    with pytest.raises(BrokenContract, match="revenue='12' is not of type double"):
        contract.validate(dict(contract.example(), revenue="12"))
    with pytest.raises(BrokenContract, match="with keys bogus"):
        contract.validate(dict(contract.example(), bogus=1))
    with pytest.raises(BrokenContract, match="churn_reasons"):
        contract.validate(dict(contract.example(), churn_reasons="a, b"))


def _messages(with_clv: bool, with_churn: bool) -> list[dict]:
    """Score messages of the worker (streams.scorer.Scorer on in-memory clients) for a 1998 history of two customers
    (a buyer, a caller), with no model, a CLV model, both models."""
    from cvm.kafka import encode_model
    from scoring.churn import ChurnModel
    from streams.models import pack_churn
    from tests.conftest import MODEL_KEY
    from tests.streams import fakes

    cfg = Config.load(env={"CVM_MODEL_KEY": MODEL_KEY, "CVM_PARTITIONS": "2"})
    codec, feed = Codec(), fakes.Feed(cfg)
    if with_clv:
        meta = {"kind": "clv", "version": 3, "valid_from": 0, "bgnbd": {"r": 0.5, "alpha": 5.0, "a": 0.7, "b": 2.5}}
        feed.offer(encode_model({**meta, "gamma_gamma": {}}, key=feed.key))
    if with_churn:
        blob = pack_churn([ChurnModel().to_bytes(), ChurnModel().to_bytes()], [b"", b""])
        feed.offer(encode_model({"kind": "churn", "version": 4, "valid_from": 0}, blob, key=feed.key))
    log = fakes.Log(cfg.partitions)
    for i in range(6):
        tx = {"event_id": f"t{i}", "customer_id": "buyer", "event_time": T0 - (60 - 9 * i) * DAY, "amount": 20.0 + i}
        log.append(cfg.topic("transactions"), b"buyer", codec.encode("transactions", tx))
    contact = {"event_id": "k1", "customer_id": "caller", "event_time": T0, "channel": "phone", "reason": "complaint"}
    log.append(cfg.topic("contacts"), b"caller", codec.encode("contacts", contact))
    fakes.drain(fakes.scorer(cfg, log, feed=feed))
    return [json.loads(v) for v in log.values(cfg.topic("customer-scores"))]


@pytest.mark.parametrize(("with_clv", "with_churn"), [(False, False), (True, False), (True, True)])
def test_the_workers_score_messages_keep_the_contract(with_clv: bool, with_churn: bool) -> None:
    contract = ScoreContract.load()
    messages = {m["customer_id"]: m for m in _messages(with_clv, with_churn)}
    assert set(messages) == {"buyer", "caller"}
    for message in _messages(with_clv, with_churn):  # every message, of every occasion (event, tick, idle)
        contract.validate(message)
    caller, buyer = messages["caller"], messages["buyer"]
    assert caller.get("p_alive") is None and caller.get("first_purchase_time") is None, "unknown, not zero"
    assert buyer["first_purchase_time"] == (T0 - 60 * DAY) // DAY * DAY
    assert (buyer.get("p_alive") is not None) == with_clv
    assert (buyer.get("churn_probability") is not None) == with_churn
    assert (buyer.get("churn_probability_60d") is not None) == with_churn
