"""The binary format of a customer's state: the bytes the worker's table holds per customer.

:class:`scoring.state.CustomerState` folds events; this module turns a state into bytes and back. It is separate
so that the fold (what the statistics mean and how an event changes them) and the storage layout (which field
sits at which byte, in how many bits, and which older formats are still read) can each be read on its own.
``CustomerState.to_bytes`` and ``CustomerState.from_bytes`` are :func:`encode` and :func:`decode` themselves,
bound on the class (a plain function attribute and a ``classmethod``): no wrapper, no extra call on the worker's
hot path.

The stored field lists live here, since their order is the byte order: :data:`DECAYED` (the decayed counters)
and :data:`COUNTS` (the counts). :mod:`scoring.state` imports them; this module imports nothing of it at run
time, so there is no import cycle.

>>> from scoring.state import CustomerState
>>> data = CustomerState().to_bytes()
>>> data[0], len(data)  # format 10: narrow counts and offsets, no re-key stream times
(10, 425)
>>> CustomerState.from_bytes(data) == CustomerState()
True
"""

from __future__ import annotations

import operator
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scoring.state import CustomerState

__all__ = ["COUNTS", "DECAYED", "MAX_BACK_MS", "decode", "encode"]

#: The decayed counters (the 7/30/90-day views) and their time constants: a counter with time constant τ days
#: counts about what a τ-day window would, with no cliff when an event leaves the window. Stored in this order.
DECAYED = (
    "spend_7d",
    "spend_30d",
    "spend_90d",
    "purchases_7d",
    "purchases_30d",
    "purchases_90d",
    "contacts_7d",
    "contacts_30d",
    "contacts_90d",
    "complaints_30d",
    "failed_payments_90d",
    # The customer's own long-run baselines and the signals of leaving (docs/churn.md): appended, so the
    # positions above keep their meaning.
    "purchases_365d",
    "spend_365d",
    "contacts_365d",
    "complaints_365d",
    "unresolved_30d",
    "unresolved_365d",
    "refunds_90d",
    "late_payments_90d",
)
#: The counts of a state, in the order the format stores them (all are attributes of the state).
COUNTS = (
    "n_transactions",
    "n_purchases",
    "n_refunds",
    "n_occasions",
    "n_contacts",
    "n_complaints",
    "n_cancellations",
    "n_unresolved",
    "n_fresh_contact_days",
    "n_phone",
    "n_email",
    "n_chat",
    "n_web",
    "n_store",
    "n_payments",
    "n_on_time",
    "n_late",
    "n_failed",
    "n_chargebacks",
    "past_due_hours",
)
_HEAD_LAYOUT = (
    "<I"  # version
    "4q3q3q3q3Q"  # offsets (per source), kind_times, rekey_times, floors (time, hash)
    "qq"  # first_time, last_time
    "5q"  # revenue, margin, cost, purchase (gross), first occasion's spend: cents
    "20I"  # counts (see COUNTS)
    "iiiQQI"  # first/last/prior occasion, occasion bits, squared gaps, active months
    "qqiQ"  # last purchase time, last cancellation time, last contact day, contact bits
    f"{len(DECAYED)}d"  # decayed counters
    "qId"  # as of (ms), tick version, ranked CLV
    "B"  # recent ids
)
_HEAD = struct.Struct(_HEAD_LAYOUT)
#: The same fields with 32-bit offsets and 16-bit counts, for the (usual) customer whose values fit: 52 bytes less.
_HEAD_NARROW = struct.Struct(_HEAD_LAYOUT.replace("4q3q3q3q3Q", "4i3q3q3q3Q").replace("20I", "20H"))
_RECENT = struct.Struct("<IQ")  # (kind stream time - event time, event hash)
#: The furthest an id-memory entry can lie behind its kind's stream time (~49 days): what :data:`_RECENT` stores
#: in 32 bits. The fold (:mod:`scoring.state`) forgets older entries.
MAX_BACK_MS = 0xFFFF_FFFF
_SECTIONS = struct.Struct("<BH")  # lengths of the alert and churn sections
#: The usual customer never had a record re-keyed: its layouts leave the re-key stream times out (24 bytes less).
_HEAD_LOCAL = struct.Struct(_HEAD_LAYOUT.replace("4q3q3q3q3Q", "4q3q3q3Q"))
_HEAD_LOCAL_NARROW = struct.Struct(_HEAD_NARROW.format.replace("4i3q3q3q3Q", "4i3q3q3Q"))
_FORMAT_VERSION = 7  # 7: _HEAD, 8: _HEAD_NARROW, 9: _HEAD_LOCAL, 10: _HEAD_LOCAL_NARROW
_FORMAT_BYTES = {
    (wide, local): bytes([_FORMAT_VERSION + 2 * local + (not wide)]) for wide in (0, 1) for local in (0, 1)
}
_HEADS = {7: _HEAD, 8: _HEAD_NARROW, 9: _HEAD_LOCAL, 10: _HEAD_LOCAL_NARROW}
_NO_REKEY = (0, 0, 0)
#: cvm 0.1's formats: their customers are rebuilt from history (cvm rebuild), not read.
_OLD_FORMATS = (5, 6)
_RECENT_N = [struct.Struct("<" + "IQ" * n) for n in range(256)]  # n entries of _RECENT at once
_get_counts = operator.attrgetter(*COUNTS)


def encode(s: CustomerState) -> bytes:
    """The bytes of a customer's state, as the worker's table stores them (``CustomerState.to_bytes``).

    The first byte names the layout: the narrow ones when every count fits 16 bits and every offset 31 bits, the
    local ones when the customer never had a record re-keyed (the usual customer: both).

    Parameters
    ----------
    s
        The customer's state.

    Returns
    -------
    bytes
        The format byte, the head, the id memory, then the alert and churn sections (:func:`decode` reads them).

    Examples
    --------
    >>> from scoring.state import CustomerState, FoldRules
    >>> s = CustomerState()
    >>> s.apply("transactions", {"event_id": "e1", "event_time": 1_000_000, "amount": 10.0}, 0, FoldRules())
    'applied'
    >>> data = encode(s)
    >>> data == s.to_bytes(), data[0]  # the method is this function; format 10 (narrow, no re-key times)
    (True, 10)
    """
    times = [s.stream_time(k) for k in range(3)]
    recent = s.recent
    counts = _get_counts(s)
    offsets = s.offsets
    narrow = max(counts) < 0x10000 and max(offsets) < 0x80000000
    local = not any(s.rekey_times)
    layout = (_HEAD_LOCAL_NARROW if narrow else _HEAD_LOCAL) if local else (_HEAD_NARROW if narrow else _HEAD)
    head = layout.pack(
        s.version,
        *offsets,
        *s.kind_times,
        *(() if local else s.rekey_times),
        *s.floors,
        *s.floor_hashes,
        s.first_time,
        s.last_time,
        s.revenue_cents,
        s.margin_cents,
        s.cost_cents,
        s.purchase_cents,
        s.first_occasion_cents,
        *counts,
        s.first_occasion,
        s.last_occasion,
        s.prior_occasion,
        s.occasion_bits,
        s.gap_sq_sum,
        s.active_months,
        s.last_purchase_time,
        s.last_cancellation_time,
        s.last_contact_day,
        s.contact_bits,
        *s.decayed,
        s.as_of,
        s.tick_version,
        s.ranked_clv,
        len(recent),
    )
    tail = _RECENT_N[len(recent)].pack(*[v for t, h in recent for v in (times[h & 3] - t, h)])
    alert, churn = s.alert_bytes, s.churn_bytes
    fmt = _FORMAT_BYTES[(not narrow, local)]
    return b"".join((fmt, head, tail, _SECTIONS.pack(len(alert), len(churn)), alert, churn))


def decode(cls: type[CustomerState], data: bytes) -> CustomerState:
    """The state that :func:`encode` wrote (``CustomerState.from_bytes``).

    Parameters
    ----------
    cls
        The state class (bound by ``classmethod``: the caller writes ``CustomerState.from_bytes(data)``).
    data
        The bytes of :func:`encode`, in any of the formats 7 to 10.

    Returns
    -------
    CustomerState
        A new state equal to the one encoded.

    Raises
    ------
    ValueError
        The bytes are of cvm 0.1's formats (5, 6: its customers are rebuilt with ``cvm rebuild``), or of none known.

    Examples
    --------
    >>> from scoring.state import CustomerState
    >>> decode(CustomerState, CustomerState().to_bytes()) == CustomerState.from_bytes(CustomerState().to_bytes())
    True
    >>> CustomerState.from_bytes(b"\x05")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: a customer state of cvm 0.1 (format 5): rebuild the customers ... with 'cvm rebuild' (README: ...)
    """
    head = _HEADS.get(data[0])
    if head is None:
        if data[0] in _OLD_FORMATS:
            raise ValueError(
                f"a customer state of cvm 0.1 (format {data[0]}): rebuild the customers from ClickHouse's history "
                "with 'cvm rebuild' (README: Stopping, restarting, upgrading)"
            )
        raise ValueError(f"unknown customer state format {data[0]}")
    s = cls.__new__(cls)
    f = head.unpack_from(data, 1)
    if data[0] > 8:  # no re-key stream times stored: they are zero
        f = f[:8] + _NO_REKEY + f[8:]
    # Explicit assignments rather than a loop of setattr: this runs once per customer per batch.
    (
        s.version,
        o0,
        o1,
        o2,
        o3,
        k0,
        k1,
        k2,
        r0,
        r1,
        r2,
        l0,
        l1,
        l2,
        h0,
        h1,
        h2,
        s.first_time,
        s.last_time,
        s.revenue_cents,
        s.margin_cents,
        s.cost_cents,
        s.purchase_cents,
        s.first_occasion_cents,
        s.n_transactions,
        s.n_purchases,
        s.n_refunds,
        s.n_occasions,
        s.n_contacts,
        s.n_complaints,
        s.n_cancellations,
        s.n_unresolved,
        s.n_fresh_contact_days,
        s.n_phone,
        s.n_email,
        s.n_chat,
        s.n_web,
        s.n_store,
        s.n_payments,
        s.n_on_time,
        s.n_late,
        s.n_failed,
        s.n_chargebacks,
        s.past_due_hours,
        s.first_occasion,
        s.last_occasion,
        s.prior_occasion,
        s.occasion_bits,
        s.gap_sq_sum,
        s.active_months,
        s.last_purchase_time,
        s.last_cancellation_time,
        s.last_contact_day,
        s.contact_bits,
        *decayed,
        s.as_of,
        s.tick_version,
        s.ranked_clv,
        n,
    ) = f
    s.offsets, s.kind_times, s.rekey_times = [o0, o1, o2, o3], [k0, k1, k2], [r0, r1, r2]
    s.floors, s.floor_hashes = [l0, l1, l2], [h0, h1, h2]
    s.decayed = decayed
    pos, times = 1 + head.size, [max(a, b) for a, b in zip(s.kind_times, s.rekey_times, strict=True)]
    if n:
        flat = _RECENT_N[n].unpack_from(data, pos)
        s.recent = [(times[h & 3] - back, h) for back, h in zip(flat[::2], flat[1::2], strict=True)]
        pos += n * _RECENT.size
    else:
        s.recent = []
    n_alert, n_churn = _SECTIONS.unpack_from(data, pos)
    pos += _SECTIONS.size
    s.alert_bytes = bytes(data[pos : pos + n_alert])
    s.churn_bytes = bytes(data[pos + n_alert : pos + n_alert + n_churn])
    return s
