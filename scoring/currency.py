"""Money in one currency: transactions in other currencies converted to the base currency at their event date.

Customers buy in several currencies; their totals must not add dollars to euros. Every money figure cvm keeps per
customer is in the **base currency** (``CVM_BASE_CURRENCY``, default EUR). A transaction in another currency is
converted with the rate of its event's UTC date, taken from a rates table loaded once at start
(``CVM_FX_RATES``: a CSV file ``date,currency,rate_to_base``, one row per currency and day)::

    date,currency,rate_to_base
    1997-01-02,USD,0.7712
    1997-01-02,GBP,1.3120

``rate_to_base`` is what one unit of ``currency`` is worth in the base currency (0.7712: one dollar is 0.7712
euros). A day without a row for a currency takes the latest earlier rate, up to ``CVM_FX_MAX_AGE_DAYS`` days old
(weekends, bank holidays); beyond that, or before the currency's first rate, there is no rate, and
:meth:`Rates.convert` raises :class:`~cvm.exceptions.NoExchangeRate` with a one-line reason — the worker sends the
record to the dead letters, never sums it as if it were in the base currency. Converted amounts are rounded to
the cent. The raw tables keep what upstream sent (``amount``, ``currency``); the sink adds the converted
``amount_base`` and ``gross_margin_base`` with this same function, and ``cvm verify`` applies it too, so all
three agree to the cent.

Contacts (``cost``) and payments carry no currency: their amounts are in the base currency.

>>> rates = Rates.from_rows("EUR", [("1997-01-02", "USD", 0.5), ("1997-01-06", "USD", 0.25)], max_age_days=7)
>>> tx = {"event_id": "t1", "customer_id": "c1", "event_time": 852_422_400_000, "amount": 10.0,
...       "currency": "USD", "gross_margin": 3.0}
>>> out = rates.convert("transactions", tx)  # 1997-01-05, a Sunday: Thursday's rate
>>> out["amount"], out["gross_margin"], out["currency"], tx["currency"]
(5.0, 1.5, 'EUR', 'USD')
>>> rates.convert("transactions", dict(tx, event_time=852_076_800_000))  # 1997-01-01
Traceback (most recent call last):
cvm.exceptions.NoExchangeRate: no USD rate to EUR on 1997-01-01: the first is of 1997-01-02 (CVM_FX_RATES)
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from cvm.exceptions import ConfigError, NoExchangeRate

__all__ = ["Rates"]

DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1).toordinal()


def _day(text: str) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return date.fromisoformat(text.strip()).toordinal() - _EPOCH


def _text(day: int) -> str:
    return date.fromordinal(day + _EPOCH).isoformat()


def _code(value: Any) -> str:
    return str(value or "").strip().upper()


class Rates:
    """Exchange rates to the base currency, by currency and day.

    Parameters
    ----------
    base
        The base currency (ISO 4217 code): transactions in it pass unchanged, with no rate needed.
    rates
        Per currency, its rates as ``(day, rate_to_base)`` pairs, days counted from 1970-01-01.
    max_age_days
        How many days a rate stays in use after its own day when no newer one exists.
    source
        Where the rates come from, for messages.

    Examples
    --------
    >>> rates = Rates("EUR")
    >>> tx = {"amount": 12.5, "currency": "EUR", "gross_margin": None, "event_time": 1}
    >>> rates.convert("transactions", tx) is tx
    True
    >>> rates.convert("transactions", dict(tx, currency="USD"))
    Traceback (most recent call last):
    cvm.exceptions.NoExchangeRate: no USD rate to EUR: CVM_FX_RATES names no rates file
    """

    def __init__(
        self,
        base: str,
        rates: Mapping[str, list[tuple[int, float]]] | None = None,
        max_age_days: float = 7.0,
        source: str = "",
    ) -> None:
        self.base = _code(base)
        if len(self.base) != 3 or not self.base.isalpha():
            raise ConfigError(f"base currency {base!r}: expected a 3-letter ISO 4217 code (CVM_BASE_CURRENCY)")
        self.max_age_days = max_age_days
        self.source = source
        self._days: dict[str, list[int]] = {}
        self._values: dict[str, list[float]] = {}
        for currency, pairs in (rates or {}).items():
            pairs = sorted(pairs)
            self._days[currency] = [d for d, _ in pairs]
            self._values[currency] = [r for _, r in pairs]
        self._cache: dict[tuple[str, int], float | str] = {}  # (currency, day) → rate, or why there is none

    @classmethod
    def from_rows(
        cls, base: str, rows: Iterable[tuple[str, str, float | str]], max_age_days: float = 7.0, source: str = ""
    ) -> Rates:
        """Rates from ``(date, currency, rate_to_base)`` rows; :class:`~cvm.exceptions.ConfigError` on a bad row.

        >>> Rates.from_rows("EUR", [("1997-01-02", "usd", "0.5")]).currencies
        ['EUR', 'USD']
        >>> Rates.from_rows("EUR", [("1997-01-02", "USD", "-1")])
        Traceback (most recent call last):
        cvm.exceptions.ConfigError: rates row 1: rate -1 is not a positive number
        """
        where = f"{source} " if source else "rates "
        found: dict[str, dict[int, float]] = {}
        base_code = _code(base)
        for n, (day_text, currency, rate_text) in enumerate(rows, 1):
            try:
                day = _day(str(day_text))
            except ValueError:
                raise ConfigError(f"{where}row {n}: date {day_text!r} is not an ISO date (YYYY-MM-DD)") from None
            code = _code(currency)
            if len(code) != 3 or not code.isalpha():
                raise ConfigError(f"{where}row {n}: currency {currency!r} is not a 3-letter ISO 4217 code")
            try:
                rate = float(rate_text)
            except (TypeError, ValueError):
                rate = math.nan
            if not (math.isfinite(rate) and rate > 0):
                raise ConfigError(f"{where}row {n}: rate {rate_text} is not a positive number")
            if code == base_code:
                if rate != 1.0:
                    raise ConfigError(f"{where}row {n}: the base currency {code} has rate {rate_text}, not 1")
                continue
            days = found.setdefault(code, {})
            if day in days and days[day] != rate:
                raise ConfigError(f"{where}row {n}: a second, different {code} rate for {_text(day)}")
            days[day] = rate
        return cls(base, {c: list(d.items()) for c, d in found.items()}, max_age_days, source)

    @classmethod
    def from_csv(cls, path: str | Path, base: str, max_age_days: float = 7.0) -> Rates:
        """Rates from a CSV file with the header ``date,currency,rate_to_base`` (other columns are ignored)."""
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                missing = {"date", "currency", "rate_to_base"} - set(reader.fieldnames or ())
                if missing:
                    raise ConfigError(
                        f"rates file {path} lacks the column(s) {', '.join(sorted(missing))}: "
                        "expected the header date,currency,rate_to_base (CVM_FX_RATES)"
                    )
                rows = [(r["date"], r["currency"], r["rate_to_base"]) for r in reader if any(r.values())]
        except OSError as exc:
            raise ConfigError(f"cannot read the rates file {path} ({exc.strerror}): fix CVM_FX_RATES") from None
        return cls.from_rows(base, rows, max_age_days, source=str(path))

    @classmethod
    def from_config(cls, cfg: Any) -> Rates:
        """The rates of a :class:`cvm.config.Config`: ``base_currency``, ``fx_rates`` (a file, or empty for none)
        and ``fx_max_age_days``."""
        if cfg.fx_rates:
            return cls.from_csv(cfg.fx_rates, cfg.base_currency, cfg.fx_max_age_days)
        return cls(cfg.base_currency, None, cfg.fx_max_age_days)

    @property
    def currencies(self) -> list[str]:
        """The currencies convertible on some day, the base currency first."""
        return [self.base, *sorted(self._days)]

    def rate(self, currency: str, event_time: int) -> float:
        """How much one unit of ``currency`` is worth in the base currency on the UTC date of ``event_time`` (ms);
        :class:`~cvm.exceptions.NoExchangeRate` when the table has no rate for that date.

        >>> Rates.from_rows("EUR", [("1997-01-02", "USD", 0.5)]).rate("USD", 852_422_400_000)
        0.5
        """
        code = _code(currency)
        if code == self.base:
            return 1.0
        day = event_time // DAY_MS
        found = self._cache.get((code, day))
        if found is None:
            found = self._cache[(code, day)] = self._lookup(code, day)
            if len(self._cache) > 100_000:
                self._cache.clear()
                self._cache[(code, day)] = found
        if isinstance(found, str):
            raise NoExchangeRate(found, "no exchange rate")
        return found

    def _lookup(self, code: str, day: int) -> float | str:
        """The rate of ``code`` on ``day``, or the reason there is none."""
        if not code:
            return f"a transaction without currency: expected an ISO 4217 code (base {self.base})"
        days = self._days.get(code)
        on = _text(day)
        if days is None:
            if not self._days and not self.source:
                return f"no {code} rate to {self.base}: CVM_FX_RATES names no rates file"
            where = self.source or "the rates"
            return f"no {code} rate to {self.base} on {on}: {code} is not in {where} (CVM_FX_RATES)"
        i = bisect.bisect_right(days, day) - 1
        if i < 0:
            return f"no {code} rate to {self.base} on {on}: the first is of {_text(days[0])} (CVM_FX_RATES)"
        if day - days[i] > self.max_age_days:
            return (
                f"no {code} rate to {self.base} on {on}: the latest before is of {_text(days[i])}, more than "
                f"{self.max_age_days:g} days old (CVM_FX_RATES, CVM_FX_MAX_AGE_DAYS)"
            )
        return self._values[code][i]

    def convert(self, kind: str, record: dict[str, Any]) -> dict[str, Any]:
        """The event with its money in the base currency.

        A transaction in another currency comes back as a new dict: ``amount`` and ``gross_margin`` converted at
        the rate of its event date and rounded to the cent, ``currency`` the base currency. Anything else (a
        transaction in the base currency, a contact, a payment) is returned itself, unchanged. Raises
        :class:`~cvm.exceptions.NoExchangeRate` (an :class:`~cvm.exceptions.InvalidEvent`) when there is no rate.
        """
        if kind != "transactions":
            return record
        currency = record.get("currency")
        if currency == self.base:
            return record
        code = _code(currency)
        if code == self.base:  # "eur ": the base currency, written loosely
            return dict(record, currency=self.base)
        rate = self.rate(code, int(record["event_time"]))
        out = dict(record, currency=self.base, amount=_in_cents(float(record["amount"]) * rate))
        margin = record.get("gross_margin")
        if margin is not None:
            out["gross_margin"] = _in_cents(float(margin) * rate)
        return out


def _in_cents(amount: float) -> float:
    """The amount rounded to the cent.

    >>> _in_cents(0.1 * 3), _in_cents(-2.675 * 1.0)
    (0.3, -2.68)
    """
    return round(amount * 100) / 100
