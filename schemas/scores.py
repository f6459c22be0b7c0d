"""The score contract: what a score message on ``customer-scores`` holds, from ``customer_score.avsc``.

Workers publish each customer's scores as a JSON object; the sink writes it to ``customers`` and
``customer_scores``. The schema names every key, its type and whether it may be left out:

* a field **without a default is required**: a message lacking it, or holding null there, breaks the contract and
  is not written (:class:`~cvm.exceptions.BrokenContract`; the sink counts and logs it);
* a field **with a default** may be left out and takes the default: ``null`` for what is not known yet (a customer
  without a CLV model has ``p_alive`` NULL, never 0, which would read "certainly gone"), ``[]`` for the churn
  reasons;
* a key the schema does not know is **unknown**: counted per key, logged once per key, and not written (a renamed
  feature shows up in the sink's status instead of turning a column into defaults).

:meth:`ScoreContract.check` is the sink's cheap check (the keys, and null in required fields; the value types are
then enforced by the columns' converters); :meth:`ScoreContract.validate` checks every value's type too, for tests
of what a worker emits. ``tests/schemas/test_score_contract.py`` keeps the schema and the ClickHouse columns equal.

>>> contract = ScoreContract.load()
>>> message = contract.example()
>>> contract.check(message) is message, message["p_alive"], message["churn_reasons"]
(True, None, [])
>>> contract.check(dict(message, clv_v2=1.0))["customer_id"], dict(contract.unknown)
('c1', {'clv_v2': 1})
>>> contract.check({k: v for k, v in message.items() if k != "revenue"})
Traceback (most recent call last):
cvm.exceptions.BrokenContract: score message without revenue (required by schemas/customer_score.avsc)
"""

from __future__ import annotations

import copy
import json
import logging
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from cvm.exceptions import BrokenContract

__all__ = ["SCHEMA_PATH", "ScoreContract"]

log = logging.getLogger("cvm.contract")

#: The score message's schema.
SCHEMA_PATH = Path(__file__).resolve().parent / "customer_score.avsc"
_SHOWN = "schemas/customer_score.avsc"


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a message with a given set of keys needs: defaults to fill, keys to drop, required keys missing."""

    fill: tuple[tuple[str, Any], ...]
    unknown: tuple[str, ...]
    missing: tuple[str, ...]


class ScoreContract:
    """The fields of the score message: which are required, which default to what, and their Avro types."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self.fields: dict[str, Any] = {f["name"]: f["type"] for f in schema["fields"]}
        self.defaults: dict[str, Any] = {f["name"]: f["default"] for f in schema["fields"] if "default" in f}
        self.required = tuple(name for name in self.fields if name not in self.defaults)
        self.nullable = frozenset(name for name, t in self.fields.items() if isinstance(t, list) and "null" in t)
        self._required_values: Callable[[dict[str, Any]], tuple[Any, ...]] = operator.itemgetter(*self.required)
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._parsed: Any = None
        #: Messages seen per unknown key, since start.
        self.unknown: Counter[str] = Counter()
        #: Messages refused, per reason.
        self.broken: Counter[str] = Counter()

    @classmethod
    def load(cls, path: Path = SCHEMA_PATH) -> ScoreContract:
        """The contract of ``schemas/customer_score.avsc`` (parsed once per call: keep the instance)."""
        schema = json.loads(path.read_text("utf-8"))
        fastavro.parse_schema(copy.deepcopy(schema))  # a malformed schema fails here, at start
        return cls(schema)

    def check(self, message: dict[str, Any]) -> dict[str, Any]:
        """The message itself, completed: missing fields with a default take it, unknown keys are removed (and
        counted). Raises :class:`~cvm.exceptions.BrokenContract` when a required field is missing or null."""
        keys = tuple(message)  # workers write their keys in one order: a tuple hashes faster than a frozenset
        plan = self._plans.get(keys)
        if plan is None:
            plan = self._plans[keys] = self._plan(frozenset(keys))
        if plan.missing:
            reason = f"without {plan.missing[0]}"
            self.broken[reason] += 1
            raise BrokenContract(f"score message {reason} (required by {_SHOWN})")
        if None in self._required_values(message):
            name = next(n for n in self.required if message[n] is None)
            reason = f"with null {name}"
            self.broken[reason] += 1
            raise BrokenContract(f"score message {reason} (required by {_SHOWN})")
        for key in plan.unknown:
            del message[key]
            self.unknown[key] += 1
        for key, default in plan.fill:
            message[key] = copy.copy(default)  # a fresh [] per message
        return message

    def _plan(self, keys: frozenset[str]) -> _Plan:
        unknown = tuple(sorted(keys - self.fields.keys()))
        for key in unknown:
            if key not in self.unknown:
                log.warning(
                    "score messages carry the key %r, which %s does not know: not written (counted in the sink's "
                    "status under score_contract.unknown_keys); add it to the schema and a migration, or stop "
                    "emitting it",
                    key,
                    _SHOWN,
                )
        missing = tuple(name for name in self.required if name not in keys)
        if missing:
            log.warning("score messages without %s: refused (required by %s)", ", ".join(missing), _SHOWN)
        fill = tuple((name, d) for name, d in self.defaults.items() if name not in keys)
        if len(self._plans) > 1000:  # key lists come from a handful of worker versions; this guards against churn
            self._plans.clear()
        return _Plan(fill, unknown, missing)

    def validate(self, message: dict[str, Any]) -> None:
        """Check every key and every value's type (Avro rules, times as integer milliseconds);
        :class:`~cvm.exceptions.BrokenContract` naming the first offending field. For tests: costlier than
        :meth:`check`."""
        unknown = sorted(message.keys() - self.fields.keys())
        if unknown:
            raise BrokenContract(f"score message with keys {', '.join(unknown)}, which {_SHOWN} does not know")
        if self._parsed is None:
            self._parsed = fastavro.parse_schema(_strip_logical(copy.deepcopy(self.schema)))
        for name in self.required:
            if name not in message:
                raise BrokenContract(f"score message without {name} (required by {_SHOWN})")
        full = {**self.defaults, **message}
        for name, avro_type in self.fields.items():
            single = {"type": "record", "name": "One", "fields": [{"name": name, "type": _strip_logical(avro_type)}]}
            if not fastavro.validation.validate({name: full[name]}, single, raise_errors=False):
                raise BrokenContract(f"score message field {name}={full[name]!r} is not of type {avro_type}")

    def example(self, customer_id: str = "c1") -> dict[str, Any]:
        """A message holding only the required fields, with zero values of their types (for tests and docs)."""
        zero = {"string": "", "long": 0, "int": 0, "double": 0.0}
        out: dict[str, Any] = {}
        for name in self.required:
            t = self.fields[name]
            out[name] = zero[t["type"] if isinstance(t, dict) else t]
        out.update(customer_id=customer_id, version=1)
        return out


def _strip_logical(schema: Any) -> Any:
    """The schema with logical types removed: times stay integer milliseconds, as in the JSON messages."""
    if isinstance(schema, dict):
        return {k: _strip_logical(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical(s) for s in schema]
    return schema
