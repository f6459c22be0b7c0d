"""The binary format of a customer's state: the bytes the worker's table holds per customer.

:class:`scoring.state.CustomerState` folds events; this module turns a state into bytes and back. It is separate
so that the fold (what the statistics mean and how an event changes them) and the storage layout (which field
sits at which byte, in how many bits, and which older formats are still read) can each be read on its own.
``CustomerState.to_bytes`` and ``CustomerState.from_bytes`` are :func:`encode` and :func:`decode` themselves,
bound on the class (a plain function attribute and a ``classmethod``): no wrapper, no extra call on the worker's
hot path.

The stored field lists, :data:`DECAYED` (the decayed counters) and :data:`COUNTS` (the counts), are defined in
:mod:`scoring.state_lanes` (their order is the byte order) and re-exported here: :mod:`scoring.state` imports them
from this module, which imports nothing of :mod:`scoring.state` at run time, so there is no import cycle.

:func:`encode` writes format 11; :func:`decode` reads it and the formats 7 to 10 that existing changelogs and
checkpoints hold (cvm 0.1's 5 and 6 are refused). Format 11 stores what a customer has, not the whole list of
fields: which fields are present, then those at their narrow types when they fit, times as their low 32 bits; its
layout (the lanes, the header's bits, the cached layouts per set of present fields) is :mod:`scoring.state_lanes`.
Every value comes back exactly: :func:`decode` of :func:`encode` is the same state, floats bit for bit, in every
format.

>>> from scoring.state import CustomerState
>>> data = CustomerState().to_bytes()
>>> data[0], len(data)  # format 11: the empty state stores only the fields every customer has
(11, 39)
>>> CustomerState.from_bytes(data) == CustomerState()
True
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from scoring.state_lanes import (
    AS_OF,
    COMPLAINTS_30D,
    COMPLAINTS_365D,
    CONTACTS_7D,
    CONTACTS_365D,
    COUNTS,
    DECAYED,
    DECODERS,
    FAILED_90D,
    FORMAT,
    HEADER,
    LANES_NARROW,
    LANES_WIDE,
    LATE_90D,
    LOW32,
    PURCHASES_7D,
    PURCHASES_365D,
    REFUNDS_90D,
    SPAN,
    SPEND_7D,
    SPEND_365D,
    TAIL,
    TIME_BITS,
    UNRESOLVED_30D,
    decoder_for,
)

if TYPE_CHECKING:
    from scoring.state import CustomerState

__all__ = ["COUNTS", "DECAYED", "MAX_BACK_MS", "decode", "encode"]

#: :data:`scoring.state_lanes.DECODERS`, under a name bound here rather than by the import: CPython compiles a method
#: call on an imported name (``DECODERS.get(...)``) without ``LOAD_METHOD``, i.e. a bound method made per call on
#: :func:`decode`'s path.
_DECODERS = DECODERS

_RECENT = struct.Struct("<IQ")  # (kind stream time - event time, event hash)
#: The furthest an id-memory entry can lie behind its kind's stream time (~49 days): what :data:`_RECENT` stores
#: in 32 bits. The fold (:mod:`scoring.state`) forgets older entries.
MAX_BACK_MS = 0xFFFF_FFFF
_RECENT_N = [struct.Struct("<" + "IQ" * n) for n in range(256)]  # n entries of _RECENT at once
_SECTIONS = struct.Struct("<BH")  # lengths of the alert and churn sections

# --- formats 7 to 10, read only ----------------------------------------------------------------------------------

#: Format 7: every field at its wide type, in the order of format 11's lanes.
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
#: The same fields with 32-bit offsets and 16-bit counts (format 8).
_HEAD_NARROW = struct.Struct(_HEAD_LAYOUT.replace("4q3q3q3q3Q", "4i3q3q3q3Q").replace("20I", "20H"))
#: Without the re-key stream times (formats 9 and 10).
_HEAD_LOCAL = struct.Struct(_HEAD_LAYOUT.replace("4q3q3q3q3Q", "4q3q3q3Q"))
_HEAD_LOCAL_NARROW = struct.Struct(_HEAD_NARROW.format.replace("4i3q3q3q3Q", "4i3q3q3Q"))
_HEADS = {7: _HEAD, 8: _HEAD_NARROW, 9: _HEAD_LOCAL, 10: _HEAD_LOCAL_NARROW}
_NO_REKEY = (0, 0, 0)
#: cvm 0.1's formats: their customers are rebuilt from history (cvm rebuild), not read.
_OLD_FORMATS = (5, 6)


def encode(s: CustomerState) -> bytes:
    """The bytes of a customer's state, as the worker's table stores them (``CustomerState.to_bytes``): format 11.

    Parameters
    ----------
    s
        The customer's state.

    Returns
    -------
    bytes
        The format byte, the header (which fields are present, which are wide), the fields present, the id memory,
        then the alert and churn sections (:func:`decode` reads them).

    Examples
    --------
    >>> from scoring.state import CustomerState, FoldRules
    >>> s = CustomerState()
    >>> s.apply("transactions", {"event_id": "e1", "event_time": 1_000_000, "amount": 10.0}, 0, FoldRules())
    'applied'
    >>> data = encode(s)
    >>> data == s.to_bytes(), data[0], len(data)  # the method is this function
    (True, 11, 167)
    """
    last = s.last_time
    kind_times, rekey_times = s.kind_times, s.rekey_times
    recent = s.recent
    offsets, decayed = s.offsets, s.decayed
    alert, churn = s.alert_bytes, s.churn_bytes
    values = (  # in the order of format 11's lanes (scoring.state_lanes._LANE_SPEC)
        s.version,
        s.tick_version,
        len(recent),
        last,
        s.first_time,
        s.as_of,
        s.ranked_clv,
        # transactions
        offsets[0],
        s.revenue_cents,
        s.margin_cents,
        s.purchase_cents,
        s.first_occasion_cents,
        s.n_transactions,
        s.n_purchases,
        s.n_occasions,
        s.first_occasion,
        s.last_occasion,
        s.occasion_bits,
        s.active_months,
        decayed[SPEND_7D],
        decayed[SPEND_7D + 1],
        decayed[SPEND_7D + 2],
        decayed[SPEND_365D],
        decayed[PURCHASES_7D],
        decayed[PURCHASES_7D + 1],
        decayed[PURCHASES_7D + 2],
        decayed[PURCHASES_365D],
        s.gap_sq_sum,
        s.n_refunds,
        decayed[REFUNDS_90D],
        s.prior_occasion,
        kind_times[0],
        s.last_purchase_time,
        # contacts
        offsets[1],
        s.cost_cents,
        s.n_contacts,
        s.n_fresh_contact_days,
        s.last_contact_day,
        s.contact_bits,
        decayed[CONTACTS_7D],
        decayed[CONTACTS_7D + 1],
        decayed[CONTACTS_7D + 2],
        decayed[CONTACTS_365D],
        s.n_phone,
        s.n_store,
        s.n_email,
        s.n_chat,
        s.n_web,
        s.n_complaints,
        decayed[COMPLAINTS_30D],
        decayed[COMPLAINTS_365D],
        s.n_unresolved,
        decayed[UNRESOLVED_30D],
        decayed[UNRESOLVED_30D + 1],
        s.n_cancellations,
        kind_times[1],
        s.last_cancellation_time,
        # payments
        offsets[2],
        s.n_payments,
        s.n_on_time,
        s.n_late,
        s.n_failed,
        s.n_chargebacks,
        s.past_due_hours,
        decayed[FAILED_90D],
        decayed[LATE_90D],
        kind_times[2],
        # rare
        offsets[3],
        *rekey_times,
        *s.floors,
        *s.floor_hashes,
    )
    try:
        packed, lanes = LANES_NARROW, LANES_NARROW.layout.pack(*values)
    except struct.error:  # a value past its narrow type: every value at its wide type
        packed, lanes = LANES_WIDE, LANES_WIDE.layout.pack(*values)
    x = int.from_bytes(lanes, "little") ^ packed.defaults
    nonzero = ((x & packed.low) + packed.low | x) & packed.top
    layout = packed.encoders.get(nonzero) or packed.encoder(nonzero)
    times = layout.times.unpack(lanes)
    ahead = s.as_of - last
    if min(times) > last - SPAN and max(times) <= last and 0 <= ahead < SPAN:
        head, runs = layout.head, layout.runs
    else:  # some times too far from last_time: stored whole
        wide = 0 if 0 <= ahead < SPAN else TIME_BITS[AS_OF]
        low = last - SPAN
        for bit, t in zip(layout.time_bits, times, strict=True):
            if not low < t <= last:
                wide |= bit
        head, runs = layout.variants.get(wide) or layout.variant(wide)
    # Each entry of the id memory as its distance from its kind's stream time (the later of its kind and re-key times).
    if len(recent) == 1:  # the usual customer
        ((t, h),) = recent
        a, b = kind_times[h & 3], rekey_times[h & 3]
        tail = _RECENT.pack((a if a >= b else b) - t, h)
    elif recent:
        stream = list(map(max, kind_times, rekey_times))
        tail = _RECENT_N[len(recent)].pack(*[v for t, h in recent for v in (stream[h & 3] - t, h)])
    else:
        tail = b""
    return b"".join(
        (
            head,
            *runs.unpack(lanes),
            tail,
            _SECTIONS.pack(len(alert), len(churn)),
            alert,
            churn,
        )
    )


def decode(cls: type[CustomerState], data: bytes) -> CustomerState:
    """The state that :func:`encode` wrote (``CustomerState.from_bytes``).

    Parameters
    ----------
    cls
        The state class (bound by ``classmethod``: the caller writes ``CustomerState.from_bytes(data)``).
    data
        The bytes of :func:`encode`, in format 11 or in any of the formats 7 to 10 (earlier versions' encoders).

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
    s = cls.__new__(cls)
    if data[0] == FORMAT:
        layout = _DECODERS.get(data[1 : 1 + HEADER]) or decoder_for(data[1 : 1 + HEADER])
        values = layout.body.unpack_from(data, 1 + HEADER)
        if layout.back or layout.ahead:
            values = list(values)  # type: ignore[assignment]
            last = values[layout.last]
            # A time's low 32 bits and last_time give it back: it lies less than 2**32 ms before (as of: after) it.
            for i in layout.back:
                values[i] = last - (last - values[i] & LOW32)  # type: ignore[index]
            for i in layout.ahead:
                values[i] = last + (values[i] - last & LOW32)  # type: ignore[index]
            values += TAIL  # type: ignore[assignment]
        else:
            values += TAIL
        f = layout.expand(values)
        pos = 1 + HEADER + layout.size
    else:
        head = _HEADS.get(data[0])
        if head is None:
            if data[0] in _OLD_FORMATS:
                raise ValueError(
                    f"a customer state of cvm 0.1 (format {data[0]}): rebuild the customers from ClickHouse's "
                    "history with 'cvm rebuild' (README: Stopping, restarting, upgrading)"
                )
            raise ValueError(f"unknown customer state format {data[0]}")
        f = head.unpack_from(data, 1)
        if data[0] > 8:  # no re-key stream times stored: they are zero
            f = f[:8] + _NO_REKEY + f[8:]
        pos = 1 + head.size
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
    if n == 1:  # the usual customer; each kind's stream time: the later of its kind and re-key times
        back, h = _RECENT.unpack_from(data, pos)
        a, b = s.kind_times[h & 3], s.rekey_times[h & 3]
        s.recent = [((a if a >= b else b) - back, h)]
        pos += _RECENT.size
    elif n:
        times = list(map(max, s.kind_times, s.rekey_times))
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
