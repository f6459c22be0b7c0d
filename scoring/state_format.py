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

    field: str  # the field, as format 7 names it (see _FORMAT_7)
    wide: str  # its struct type in format 7
    narrow: str  # its struct type when every value fits (the usual customer)
    default: float  # the value left out: a field equal to it, bit for bit, is not stored


#: The fields in the order of the formats 7 to 10 (decayed counters by name).
_FORMAT_7 = (
    "version",
    *(f"offsets{i}" for i in range(4)),
    *(f"kind_times{i}" for i in range(3)),
    *(f"rekey_times{i}" for i in range(3)),
    *(f"floors{i}" for i in range(3)),
    *(f"floor_hashes{i}" for i in range(3)),
    "first_time",
    "last_time",
    "revenue_cents",
    "margin_cents",
    "cost_cents",
    "purchase_cents",
    "first_occasion_cents",
    *COUNTS,
    "first_occasion",
    "last_occasion",
    "prior_occasion",
    "occasion_bits",
    "gap_sq_sum",
    "active_months",
    "last_purchase_time",
    "last_cancellation_time",
    "last_contact_day",
    "contact_bits",
    *DECAYED,
    "as_of",
    "tick_version",
    "ranked_clv",
    "n_recent",
)


# The positions in DECAYED of the counters, for the encoder's values (checked against _LANE_SPEC below).
_SPEND_7D, _SPEND_365D, _PURCHASES_7D, _PURCHASES_365D, _REFUNDS_90D = (
    DECAYED.index(name) for name in ("spend_7d", "spend_365d", "purchases_7d", "purchases_365d", "refunds_90d")
)
_CONTACTS_7D, _CONTACTS_365D, _COMPLAINTS_30D, _COMPLAINTS_365D, _UNRESOLVED_30D = (
    DECAYED.index(name)
    for name in ("contacts_7d", "contacts_365d", "complaints_30d", "complaints_365d", "unresolved_30d")
)
_FAILED_90D, _LATE_90D = DECAYED.index("failed_payments_90d"), DECAYED.index("late_payments_90d")


def _lane_group(names: str, wide: str, narrow: str, default: float = 0) -> list[_Lane]:
    return [_Lane(name, wide, narrow, default) for name in names.split()]


#: Format 11's lanes. Grouped by the kind of event that sets them and, within a group, the usual customer's first,
#: so that the fields a customer has mostly lie side by side (fewer runs of bytes to copy, see _Encoder); the times
#: of a group last. Every field of :data:`_FORMAT_7` once: the encoder's values are in this order.
_LANE_SPEC: tuple[_Lane, ...] = (
    # every customer's: version, tick version, recent ids, the times' base; first time, as of; ranked CLV (NaN: none)
    *_lane_group("version tick_version", "I", "I"),
    *_lane_group("n_recent", "B", "B"),
    *_lane_group("last_time first_time as_of", "q", "q"),
    *_lane_group("ranked_clv", "d", "d", _NAN),
    # transactions
    *_lane_group("offsets0", "q", "i", -1),  # -1: none yet
    *_lane_group("revenue_cents margin_cents purchase_cents first_occasion_cents", "q", "i"),
    *_lane_group("n_transactions n_purchases n_occasions", "I", "H"),
    *_lane_group("first_occasion last_occasion", "i", "h", -1),  # -1: none
    *_lane_group("occasion_bits", "Q", "Q"),
    *_lane_group("active_months", "I", "H"),
    *_lane_group(
        "spend_7d spend_30d spend_90d spend_365d purchases_7d purchases_30d purchases_90d purchases_365d", "d", "d", 0.0
    ),
    *_lane_group("gap_sq_sum", "Q", "I"),
    *_lane_group("n_refunds", "I", "H"),
    *_lane_group("refunds_90d", "d", "d", 0.0),
    *_lane_group("prior_occasion", "i", "h", -1),
    *_lane_group("kind_times0 last_purchase_time", "q", "q"),
    # contacts
    *_lane_group("offsets1", "q", "i", -1),
    *_lane_group("cost_cents", "q", "i"),
    *_lane_group("n_contacts n_fresh_contact_days", "I", "H"),
    *_lane_group("last_contact_day", "i", "h", -1),
    *_lane_group("contact_bits", "Q", "Q"),
    *_lane_group("contacts_7d contacts_30d contacts_90d contacts_365d", "d", "d", 0.0),
    *_lane_group("n_phone n_store n_email n_chat n_web n_complaints", "I", "H"),
    *_lane_group("complaints_30d complaints_365d", "d", "d", 0.0),
    *_lane_group("n_unresolved", "I", "H"),
    *_lane_group("unresolved_30d unresolved_365d", "d", "d", 0.0),
    *_lane_group("n_cancellations", "I", "H"),
    *_lane_group("kind_times1 last_cancellation_time", "q", "q"),
    # payments
    *_lane_group("offsets2", "q", "i", -1),
    *_lane_group("n_payments n_on_time n_late n_failed n_chargebacks past_due_hours", "I", "H"),
    *_lane_group("failed_payments_90d late_payments_90d", "d", "d", 0.0),
    *_lane_group("kind_times2", "q", "q"),
    # rare: the re-key topic's offset and stream times, the floors of the id memory and their hashes
    *_lane_group("offsets3", "q", "i", -1),
    *_lane_group("rekey_times0 rekey_times1 rekey_times2 floors0 floors1 floors2", "q", "q"),
    *_lane_group("floor_hashes0 floor_hashes1 floor_hashes2", "Q", "Q"),
)
assert sorted(lane.field for lane in _LANE_SPEC) == sorted(_FORMAT_7)
_LANE = {lane.field: i for i, lane in enumerate(_LANE_SPEC)}
assert [lane.field for lane in _LANE_SPEC if lane.field in DECAYED] == [
    DECAYED[i]
    for i in (_SPEND_7D, _SPEND_7D + 1, _SPEND_7D + 2, _SPEND_365D, _PURCHASES_7D, _PURCHASES_7D + 1)
    + (_PURCHASES_7D + 2, _PURCHASES_365D, _REFUNDS_90D, _CONTACTS_7D, _CONTACTS_7D + 1, _CONTACTS_7D + 2)
    + (_CONTACTS_365D, _COMPLAINTS_30D, _COMPLAINTS_365D, _UNRESOLVED_30D, _UNRESOLVED_30D + 1, _FAILED_90D, _LATE_90D)
]  # the encoder's values take the decayed counters in this order
_LAST_TIME, _AS_OF = _LANE["last_time"], _LANE["as_of"]
#: The times of events folded, at or before last_time (kind stream times, floors, first, last purchase and last
#: cancellation times): stored as their low 32 bits when they lie less than 2**32 ms before it, else whole. ``as_of``
#: (the last scoring), at or after it, likewise when it lies less than 2**32 ms after it.
_BACK = tuple(
    sorted(
        _LANE[name]
        for name in ("first_time", "last_purchase_time", "last_cancellation_time", "kind_times0", "kind_times1")
        + ("kind_times2", "floors0", "floors1", "floors2")
    )
)
_TIMES = (*_BACK, _AS_OF)
#: Lanes stored whatever their value (every customer has them).
_ALWAYS = tuple(_LANE[name] for name in ("version", "tick_version", "n_recent", "last_time", "first_time", "as_of"))
#: The presence bits (66): one per other lane, but one for the three re-key stream times and one per kind's floor
#: and its hash.
_SLOTS = (
    *((i,) for i, lane in enumerate(_LANE_SPEC) if i not in _ALWAYS and not lane.field.startswith(("rekey", "floor"))),
    tuple(_LANE[f"rekey_times{i}"] for i in range(3)),
    *((_LANE[f"floors{i}"], _LANE[f"floor_hashes{i}"]) for i in range(3)),
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
    types = []
    for i in lanes:
        if i in _TIME_BITS:
            types.append("q" if flags & _TIME_BITS[i] else "I")
        else:
            types.append(_LANE_SPEC[i].wide if flags & _WIDE_VALUES else _LANE_SPEC[i].narrow)
    return types


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
        # Every field in format 7's order, from the body's values followed by _TAIL (an absent one: its default).
        at = {lane: n for n, lane in enumerate(lanes)}
        self.expand = itemgetter(
            *(at.get(_LANE[name], len(lanes) + _default_at(_LANE_SPEC[_LANE[name]].default)) for name in _FORMAT_7)
        )


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
    values = (  # in the order of _LANE_SPEC
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
        decayed[_SPEND_7D],
        decayed[_SPEND_7D + 1],
        decayed[_SPEND_7D + 2],
        decayed[_SPEND_365D],
        decayed[_PURCHASES_7D],
        decayed[_PURCHASES_7D + 1],
        decayed[_PURCHASES_7D + 2],
        decayed[_PURCHASES_365D],
        s.gap_sq_sum,
        s.n_refunds,
        decayed[_REFUNDS_90D],
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
        decayed[_CONTACTS_7D],
        decayed[_CONTACTS_7D + 1],
        decayed[_CONTACTS_7D + 2],
        decayed[_CONTACTS_365D],
        s.n_phone,
        s.n_store,
        s.n_email,
        s.n_chat,
        s.n_web,
        s.n_complaints,
        decayed[_COMPLAINTS_30D],
        decayed[_COMPLAINTS_365D],
        s.n_unresolved,
        decayed[_UNRESOLVED_30D],
        decayed[_UNRESOLVED_30D + 1],
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
        decayed[_FAILED_90D],
        decayed[_LATE_90D],
        kind_times[2],
        # rare
        offsets[3],
        *rekey_times,
        *s.floors,
        *s.floor_hashes,
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
