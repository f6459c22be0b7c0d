"""Currency conversion: the rates table, its lookups by event date, and what happens without a rate."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cvm.config import Config
from cvm.events import parse_time
from cvm.exceptions import ConfigError, InvalidEvent, NoExchangeRate
from scoring.currency import Rates

DAY = 86_400_000


def tx(amount: float, currency: str, when: str, margin: float | None = None) -> dict:
    return {"event_id": "t", "customer_id": "c", "event_time": parse_time(when), "amount": amount,
            "currency": currency, "gross_margin": margin}  # fmt: skip


def test_rates_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("\ufeffdate,currency,rate_to_base,source\n1998-06-01,USD,0.9,ecb\n\n1998-06-02,usd,0.8,ecb\n")
    rates = Rates.from_config(Config(fx_rates=str(path), base_currency="EUR"))
    assert rates.currencies == ["EUR", "USD"]
    assert rates.convert("transactions", tx(10.0, "USD", "1998-06-01T23:59:59Z"))["amount"] == 9.0
    assert rates.convert("transactions", tx(10.0, "USD", "1998-06-02T00:00:00Z"))["amount"] == 8.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("day,currency,rate\n", "lacks the column\\(s\\) date, rate_to_base"),
        ("date,currency,rate_to_base\n98-6-1,USD,1\n", "row 1: date '98-6-1' is not an ISO date"),
        ("date,currency,rate_to_base\n1998-06-01,DOLLAR,1\n", "row 1: currency 'DOLLAR' is not a 3-letter"),
        ("date,currency,rate_to_base\n1998-06-01,USD,nan\n", "row 1: rate nan is not a positive number"),
        ("date,currency,rate_to_base\n1998-06-01,USD,0\n", "row 1: rate 0 is not a positive number"),
        ("date,currency,rate_to_base\n1998-06-01,EUR,1.1\n", "the base currency EUR has rate 1.1, not 1"),
        ("date,currency,rate_to_base\n1998-06-01,USD,1\n1998-06-01,USD,2\n", "row 2: a second, different USD rate"),
    ],
)
def test_a_bad_rates_file_is_a_one_line_error_at_start(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rates.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Rates.from_csv(path, "EUR")


def test_a_missing_rates_file_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the rates file .*: fix CVM_FX_RATES"):
        Rates.from_config(Config(fx_rates=str(tmp_path / "none.csv")))


def test_a_rate_ages_out_after_the_max_age() -> None:
    rates = Rates.from_rows("EUR", [("1998-06-01", "USD", 0.5)], max_age_days=3)
    assert rates.convert("transactions", tx(2.0, "USD", "1998-06-04T23:00:00Z"))["amount"] == 1.0
    with pytest.raises(NoExchangeRate, match="the latest before is of 1998-06-01, more than 3 days old"):
        rates.convert("transactions", tx(2.0, "USD", "1998-06-05T00:00:00Z"))
    with pytest.raises(NoExchangeRate, match="on 1998-05-31: the first is of 1998-06-01"):
        rates.convert("transactions", tx(2.0, "USD", "1998-05-31T12:00:00Z"))
    with pytest.raises(NoExchangeRate, match="no GBP rate to EUR on 1998-06-01: GBP is not in the rates"):
        rates.convert("transactions", tx(2.0, "GBP", "1998-06-01"))
    with pytest.raises(NoExchangeRate, match="a transaction without currency"):
        rates.convert("transactions", tx(2.0, "", "1998-06-01"))


def test_no_rate_is_an_invalid_event_the_worker_dead_letters_with_a_stable_reason() -> None:
    rates = Rates("EUR")
    with pytest.raises(InvalidEvent) as caught:
        rates.convert("transactions", tx(1.0, "USD", "1998-06-01"))
    assert type(caught.value).__name__ == "NoExchangeRate" and caught.value.reason == "no exchange rate"
    assert str(caught.value) == "no USD rate to EUR: CVM_FX_RATES names no rates file"


def test_other_kinds_and_the_base_currency_pass_unchanged() -> None:
    rates = Rates("USD")
    contact = {"event_id": "k", "customer_id": "c", "event_time": 1, "channel": "phone", "cost": 3.0}
    assert rates.convert("contacts", contact) is contact
    record = tx(10.0, "USD", "1998-06-01", 2.0)
    assert rates.convert("transactions", record) is record
    loose = rates.convert("transactions", tx(10.0, " usd", "1998-06-01", 2.0))
    assert loose["currency"] == "USD" and loose["amount"] == 10.0


@given(
    amount=st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2)),
    rate=st.floats(1e-4, 1e4, allow_nan=False),
    margin=st.none() | st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 2)),
)
def test_converted_money_is_in_cents_of_the_base_and_the_input_is_left_alone(
    amount: float, rate: float, margin: float | None
) -> None:
    rates = Rates.from_rows("EUR", [("1998-06-01", "USD", rate)])
    record = tx(amount, "USD", "1998-06-01T12:00:00Z", margin)
    before = dict(record)
    out = rates.convert("transactions", record)
    assert record == before, "the raw record keeps what upstream sent"
    assert out["currency"] == "EUR"
    assert round(out["amount"], 2) == out["amount"], "to the cent"
    assert abs(out["amount"] - amount * rate) <= 0.005 + 1e-9 * abs(amount * rate)
    assert (out["gross_margin"] is None) == (margin is None)
