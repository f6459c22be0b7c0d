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

:func:`encode` writes format 11; :func:`decode` reads it and the formats 7 to 10 that existing changelogs and
checkpoints hold (cvm 0.1's 5 and 6 are refused). Format 11 stores what a customer has, not the whole list of
fields: after the format byte, 10 bytes of bits say which fields differ from their default (zero, -1 for "none
yet", NaN for no ranked CLV: bit for bit, so -0.0 and a NaN's payload are kept), which times are stored whole and
whether the values are at their wide types; then the fields that differ, at their narrow types when every value
fits (16-bit counts, 32-bit cents and offsets), and each time that lies within 2**32 ms (~49 days) of the
customer's stream time ``last_time`` as its low 32 bits (``last_time`` gives the rest). The id memory and the alert
and churn sections follow as in format 10. On the bench's load (139,497 customers) that is 276 bytes on average and
448 at most, against 532 and 620 in format 10. Every value comes back exactly: :func:`decode` of :func:`encode` is
the same state, floats bit for bit, in every format.

Which fields are present is found without a Python test per field: :func:`encode` packs every field (:class:`_Lanes`)
and tests them all at once on the packed bytes read as one integer; each set of present fields has its layouts,
built once and cached (:class:`_Encoder`, :class:`_Decoder`).

>>> from scoring.state import CustomerState
>>> data = CustomerState().to_bytes()
>>> data[0], len(data)  # format 11: the empty state stores only the fields every customer has
(11, 39)
>>> CustomerState.from_bytes(data) == CustomerState()
True
"""

from __future__ import annotations

import math
import struct
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

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
_RECENT = struct.Struct("<IQ")  # (kind stream time - event time, event hash)
#: The furthest an id-memory entry can lie behind its kind's stream time (~49 days): what :data:`_RECENT` stores
#: in 32 bits. The fold (:mod:`scoring.state`) forgets older entries.
MAX_BACK_MS = 0xFFFF_FFFF
_RECENT_N = [struct.Struct("<" + "IQ" * n) for n in range(256)]  # n entries of _RECENT at once
_SECTIONS = struct.Struct("<BH")  # lengths of the alert and churn sections

# --- format 11 ---------------------------------------------------------------------------------------------------

_NAN = math.nan


class _Lane(NamedTuple):
    """One field of format 11 (a lane of :class:`_Lanes`)."""

    wide: str  # its struct type in format 7
    narrow: str  # its struct type when every value fits (the usual customer)
    default: float  # the value left out: a field equal to it, bit for bit, is not stored


#: Format 11's lanes: the fields of a state in the order of the formats 7 to 10 (a time is a 64-bit lane, stored as
#: said below).
_LANE_SPEC: tuple[_Lane, ...] = (
    _Lane("I", "I", 0),  # version
    *[_Lane("q", "i", -1)] * 4,  # offsets (per source); -1: none yet
    *[_Lane("q", "q", 0)] * 3,  # kind_times
    *[_Lane("q", "q", 0)] * 3,  # rekey_times: one presence bit for the three (zero but for re-keyed customers)
    *[_Lane("q", "q", 0)] * 3,  # floors: one presence bit per kind's floor and its hash
    *[_Lane("Q", "Q", 0)] * 3,  # floor_hashes
    _Lane("q", "q", 0),  # first_time
    _Lane("q", "q", 0),  # last_time: the base of the other times
    *[_Lane("q", "i", 0)] * 5,  # revenue, margin, cost, purchase (gross), first occasion's spend: cents
    *[_Lane("I", "H", 0)] * len(COUNTS),  # counts (see COUNTS)
    *[_Lane("i", "h", -1)] * 3,  # first/last/prior occasion; -1: none
    _Lane("Q", "Q", 0),  # occasion bits
    _Lane("Q", "I", 0),  # squared gaps
    _Lane("I", "H", 0),  # active months
    _Lane("q", "q", 0),  # last purchase time
    _Lane("q", "q", 0),  # last cancellation time
    _Lane("i", "h", -1),  # last contact day; -1: none
    _Lane("Q", "Q", 0),  # contact bits
    *[_Lane("d", "d", 0.0)] * len(DECAYED),  # decayed counters
    _Lane("q", "q", 0),  # as of (ms)
    _Lane("I", "I", 0),  # tick version
    _Lane("d", "d", _NAN),  # ranked CLV; NaN: none
    _Lane("B", "B", 0),  # recent ids
)
_LAST_TIME, _AS_OF = 18, 73  # the lanes of last_time and as_of
#: The times of events folded, at or before last_time (kind stream times, floors, first, last purchase and last
#: cancellation times): stored as their low 32 bits when they lie less than 2**32 ms before it, else whole. ``as_of``
#: (the last scoring), at or after it, likewise when it lies less than 2**32 ms after it.
_BACK = (5, 6, 7, 11, 12, 13, 17, 50, 51)
_TIMES = (*_BACK, _AS_OF)
#: Lanes stored whatever their value (every customer has them): version, first and last time, as of, tick version,
#: recent ids.
_ALWAYS = (0, 17, 18, 73, 74, 76)
#: The presence bits (66): one per other lane, but one for the three re-key stream times and one per kind's floor
#: and its hash.
_SLOTS = tuple(
    (8, 9, 10) if i == 8 else (i, i + 3) if i in (11, 12, 13) else (i,)
    for i in range(len(_LANE_SPEC))
    if i not in _ALWAYS and i not in (9, 10, 14, 15, 16)
)
_SLOT_OF = {lane: n for n, slot in enumerate(_SLOTS) for lane in slot}
#: Then one bit per time (10): set, the time is stored whole (64 bits), not as its low 32 bits.
_TIME_BITS = {lane: 1 << len(_SLOTS) + j for j, lane in enumerate(_TIMES)}
#: Then one bit: set, the other lanes are at their wide type (a count past 16 bits, cents past 32 bits, ...).
_WIDE_VALUES = 1 << len(_SLOTS) + len(_TIMES)
_HEADER = 10  # bytes of those 77 bits, after the format byte
_FORMAT = 11
_SPAN = 1 << 32  # a time stored in 32 bits lies less than this before last_time (as of: after it)
_LOW32 = _SPAN - 1


class _Lanes:
    """Every lane packed at its narrow or its wide type: what :func:`encode` packs first, and its masks.

    With x the packed lanes read as one integer, XOR the defaults' bits, ``((x & low) + low | x) & top`` has the top
    bit of a lane set when the lane is not zero, i.e. differs from its default (the sum never carries out of a lane):
    which fields are present, in a few operations on one integer instead of a Python test per field.
    """

    def __init__(self, wide: bool) -> None:
        self.types = [spec.wide if wide else spec.narrow for spec in _LANE_SPEC]
        self.layout = struct.Struct("<" + "".join(self.types))
        self.flag = _WIDE_VALUES if wide else 0
        self.low = self.top = bit = 0
        self.tops = []
        for i, t in enumerate(self.types):
            width = 8 * struct.calcsize(t)
            self.tops.append(bit + width - 1)
            if i not in _ALWAYS:
                self.low |= (1 << width - 1) - 1 << bit
                self.top |= 1 << bit + width - 1
            bit += width
        self.defaults = int.from_bytes(self.layout.pack(*(spec.default for spec in _LANE_SPEC)), "little")
        self.encoders: dict[int, _Encoder] = {}

    def encoder(self, nonzero: int) -> _Encoder:
        if len(self.encoders) >= _CACHED:
            self.encoders.clear()
        found = self.encoders[nonzero] = _Encoder(self, nonzero)
        return found


#: Layouts kept (per direction) for the sets of present fields seen (the 139,497 customers of the bench's load have
#: about 1,200). Past this many, the cache starts over.
_CACHED = 4096


def _lanes(slots: list[int]) -> list[int]:
    """The lanes stored, in order, when these slots are present."""
    return sorted({*_ALWAYS, *(i for n in slots for i in _SLOTS[n])})


def _body(lanes: list[int], flags: int) -> list[str]:
    """The types of format 11's body (``flags``: the header's bits): the lanes stored, in order, at their narrow or
    wide type; a time as its low 32 bits (``I``) or whole (``q``)."""
    wide = flags & _WIDE_VALUES
    return [
        ("q" if flags & _TIME_BITS[i] else "I")
        if i in _TIME_BITS
        else _LANE_SPEC[i].wide
        if wide
        else _LANE_SPEC[i].narrow
        for i in lanes
    ]


class _Encoder:
    """How :func:`encode` writes the states whose present lanes are these (``nonzero``: the lanes' top bits)."""

    __slots__ = ("flags", "head", "lanes", "packed", "runs", "times", "variants")

    def __init__(self, packed: _Lanes, nonzero: int) -> None:
        slots = sorted({_SLOT_OF[i] for i, b in enumerate(packed.tops) if nonzero >> b & 1})
        lanes = self.lanes = _lanes(slots)
        self.packed = packed
        self.flags = sum(1 << n for n in slots) | packed.flag
        # The times of events folded that are stored, to check they lie within 32 bits of last_time.
        self.times = struct.Struct(
            "<"
            + "".join(t if i in lanes and i in _BACK else f"{struct.calcsize(t)}x" for i, t in enumerate(packed.types))
        )
        self.variants: dict[int, tuple[bytes, struct.Struct]] = {}
        self.head, self.runs = self.variant(0)  # every time in 32 bits: the usual case

    def variant(self, wide_times: int) -> tuple[bytes, struct.Struct]:
        """The format byte and header, and the body: runs of the packed lanes' bytes (little-endian: a time's low 32
        bits are its first 4 bytes), with pad bytes skipping the lanes left out and the high bits of the times."""
        flags = self.flags | wide_times
        runs: list[list] = []  # [kept, bytes]
        for i, t in enumerate(self.packed.types):
            size = struct.calcsize(t)
            if i not in self.lanes:
                parts = [(False, size)]
            elif i in _TIME_BITS and not wide_times & _TIME_BITS[i]:
                parts = [(True, 4), (False, 4)]
            else:
                parts = [(True, size)]
            for kept, n in parts:
                if runs and runs[-1][0] == kept:
                    runs[-1][1] += n
                else:
                    runs.append([kept, n])
        found = self.variants[wide_times] = (
            bytes([_FORMAT]) + flags.to_bytes(_HEADER, "little"),
            struct.Struct("<" + "".join(f"{n}s" if kept else f"{n}x" for kept, n in runs)),
        )
        return found


_NARROW_LANES, _WIDE_LANES = _Lanes(wide=False), _Lanes(wide=True)
#: What an absent lane decodes to: its default, found after the body's values by index (see :class:`_Decoder`).
_TAIL = (0, -1, 0.0, _NAN)


def _default_at(default: float) -> int:
    """The position of a lane's default in :data:`_TAIL` (0 and 0.0 are equal keys: matched by type)."""
    if isinstance(default, float):
        return 2 if default == 0.0 else 3
    return 0 if default == 0 else 1


class _Decoder:
    """How :func:`decode` reads a format 11 body with this header: its layout, its times, where each field is."""

    __slots__ = ("ahead", "back", "body", "expand", "last", "size")

    def __init__(self, header: bytes) -> None:
        flags = int.from_bytes(header, "little")
        lanes = _lanes([n for n in range(len(_SLOTS)) if flags >> n & 1])
        self.body = struct.Struct("<" + "".join(_body(lanes, flags)))
        self.size = self.body.size
        self.last = lanes.index(_LAST_TIME)
        self.back = tuple(lanes.index(i) for i in _BACK if i in lanes and not flags & _TIME_BITS[i])
        self.ahead = () if flags & _TIME_BITS[_AS_OF] else (lanes.index(_AS_OF),)
        # Every lane in order, from the body's values followed by _TAIL (an absent lane: its default).
        at = {lane: n for n, lane in enumerate(lanes)}
        self.expand = itemgetter(*(at.get(i, len(lanes) + _default_at(s.default)) for i, s in enumerate(_LANE_SPEC)))


_DECODERS: dict[bytes, _Decoder] = {}


def _decoder(header: bytes) -> _Decoder:
    if len(_DECODERS) >= _CACHED:
        _DECODERS.clear()
    found = _DECODERS[header] = _Decoder(header)
    return found


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
_NO_REKEY_LIST = [0, 0, 0]
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
    values = (
        s.version,
        *s.offsets,
        *kind_times,
        *rekey_times,
        *s.floors,
        *s.floor_hashes,
        s.first_time,
        last,
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
        *s.decayed,
        s.as_of,
        s.tick_version,
        s.ranked_clv,
        len(recent),
    )
    try:
        packed, lanes = _NARROW_LANES, _NARROW_LANES.layout.pack(*values)
    except struct.error:  # a value past its narrow type: every value at its wide type
        packed, lanes = _WIDE_LANES, _WIDE_LANES.layout.pack(*values)
    x = int.from_bytes(lanes, "little") ^ packed.defaults
    nonzero = ((x & packed.low) + packed.low | x) & packed.top
    layout = packed.encoders.get(nonzero) or packed.encoder(nonzero)
    times = layout.times.unpack(lanes)
    ahead = s.as_of - last
    if min(times) > last - _SPAN and max(times) <= last and 0 <= ahead < _SPAN:
        head, runs = layout.head, layout.runs
    else:  # some times too far from last_time: stored whole
        wide = 0 if 0 <= ahead < _SPAN else _TIME_BITS[_AS_OF]
        for i, t in zip([i for i in layout.lanes if i in _BACK], times, strict=True):
            if not last - _SPAN < t <= last:
                wide |= _TIME_BITS[i]
        head, runs = layout.variants.get(wide) or layout.variant(wide)
    if recent:
        if rekey_times == _NO_REKEY_LIST and min(kind_times) >= 0:
            stream = kind_times  # each kind's stream time: the later of its kind and re-key times
        else:
            stream = list(map(max, kind_times, rekey_times))
        if len(recent) == 1:  # the usual customer
            ((t, h),) = recent
            tail = _RECENT.pack(stream[h & 3] - t, h)
        else:
            tail = _RECENT_N[len(recent)].pack(*[v for t, h in recent for v in (stream[h & 3] - t, h)])
    else:
        tail = b""
    alert, churn = s.alert_bytes, s.churn_bytes
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
    if data[0] == _FORMAT:
        layout = _DECODERS.get(data[1 : 1 + _HEADER]) or _decoder(data[1 : 1 + _HEADER])
        values = layout.body.unpack_from(data, 1 + _HEADER)
        if layout.back or layout.ahead:
            values = list(values)  # type: ignore[assignment]
            last = values[layout.last]
            # A time's low 32 bits and last_time give it back: it lies less than 2**32 ms before (as of: after) it.
            for i in layout.back:
                values[i] = last - (last - values[i] & _LOW32)  # type: ignore[index]
            for i in layout.ahead:
                values[i] = last + (values[i] - last & _LOW32)  # type: ignore[index]
            values += _TAIL  # type: ignore[assignment]
        else:
            values += _TAIL
        f = layout.expand(values)
        pos = 1 + _HEADER + layout.size
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
    if n:
        kind_times, rekey_times = s.kind_times, s.rekey_times
        if rekey_times == _NO_REKEY_LIST and min(kind_times) >= 0:
            times = kind_times  # each kind's stream time: the later of its kind and re-key times
        else:
            times = list(map(max, kind_times, rekey_times))
        if n == 1:  # the usual customer
            back, h = _RECENT.unpack_from(data, pos)
            s.recent = [(times[h & 3] - back, h)]
        else:
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
