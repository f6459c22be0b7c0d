"""Format 11's layout: where each field of a customer's state sits, and the cached layouts that write and read it.

:mod:`scoring.state_format` turns a state into bytes and back (its ``encode`` writes format 11, its ``decode`` reads
format 11 and the formats 7 to 10); this module is format 11's layout, which those two use. It also holds the stored
field lists, since their order is the byte order: :data:`DECAYED` (the decayed counters) and :data:`COUNTS` (the
counts). :mod:`scoring.state_format` re-exports them under the same names (:mod:`scoring.state` and the tests import
them from there); this module imports neither it nor :mod:`scoring.state`, so there is no import cycle.

Format 11 stores what a customer has, not the whole list of fields: after the format byte, 10 bytes of bits say
which fields differ from their default (zero, -1 for "none yet", NaN for no ranked CLV: bit for bit, so -0.0 and a
NaN's payload are kept), which times are stored whole and whether the values are at their wide types; then the
fields that differ, at their narrow types when every value fits (16-bit counts, 32-bit cents and offsets), and each
time that lies within 2**32 ms (~49 days) of the customer's stream time ``last_time`` as its low 32 bits
(``last_time`` gives the rest). The id memory and the alert and churn sections follow as in format 10. On the
bench's load (139,497 customers) that is 276 bytes on average and 448 at most, against 532 and 620 in format 10.

Which fields are present is found without a Python test per field: ``encode`` packs every field (:class:`_Lanes`)
and tests them all at once on the packed bytes read as one integer; each set of present fields has its layouts,
built once and cached (:class:`_Encoder`, :class:`_Decoder`).

>>> FORMAT, HEADER, len(_SLOTS), len(_TIMES)  # the header's bits: 66 present, 10 times whole, 1 values wide
(11, 10, 66, 10)
"""

from __future__ import annotations

import math
import struct
from operator import itemgetter
from typing import NamedTuple

__all__ = [
    "AS_OF",
    "BACK",
    "COMPLAINTS_30D",
    "COMPLAINTS_365D",
    "CONTACTS_7D",
    "CONTACTS_365D",
    "COUNTS",
    "DECAYED",
    "DECODERS",
    "FAILED_90D",
    "FORMAT",
    "HEADER",
    "LANES_NARROW",
    "LANES_WIDE",
    "LATE_90D",
    "LOW32",
    "PURCHASES_7D",
    "PURCHASES_365D",
    "REFUNDS_90D",
    "SPAN",
    "SPEND_7D",
    "SPEND_365D",
    "TAIL",
    "TIME_BITS",
    "UNRESOLVED_30D",
    "decoder_for",
]

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


#: The positions in DECAYED of the counters, for the encoder's values (checked against _LANE_SPEC below).
SPEND_7D, SPEND_365D, PURCHASES_7D, PURCHASES_365D, REFUNDS_90D = (
    DECAYED.index(name) for name in ("spend_7d", "spend_365d", "purchases_7d", "purchases_365d", "refunds_90d")
)
CONTACTS_7D, CONTACTS_365D, COMPLAINTS_30D, COMPLAINTS_365D, UNRESOLVED_30D = (
    DECAYED.index(name)
    for name in ("contacts_7d", "contacts_365d", "complaints_30d", "complaints_365d", "unresolved_30d")
)
FAILED_90D, LATE_90D = DECAYED.index("failed_payments_90d"), DECAYED.index("late_payments_90d")


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
    for i in (SPEND_7D, SPEND_7D + 1, SPEND_7D + 2, SPEND_365D, PURCHASES_7D, PURCHASES_7D + 1)
    + (PURCHASES_7D + 2, PURCHASES_365D, REFUNDS_90D, CONTACTS_7D, CONTACTS_7D + 1, CONTACTS_7D + 2)
    + (CONTACTS_365D, COMPLAINTS_30D, COMPLAINTS_365D, UNRESOLVED_30D, UNRESOLVED_30D + 1, FAILED_90D, LATE_90D)
]  # the encoder's values take the decayed counters in this order
_LAST_TIME, AS_OF = _LANE["last_time"], _LANE["as_of"]
#: The times of events folded, at or before last_time (kind stream times, floors, first, last purchase and last
#: cancellation times): stored as their low 32 bits when they lie less than 2**32 ms before it, else whole. ``as_of``
#: (the last scoring), at or after it, likewise when it lies less than 2**32 ms after it.
BACK = tuple(
    sorted(
        _LANE[name]
        for name in ("first_time", "last_purchase_time", "last_cancellation_time", "kind_times0", "kind_times1")
        + ("kind_times2", "floors0", "floors1", "floors2")
    )
)
_TIMES = (*BACK, AS_OF)
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
TIME_BITS = {lane: 1 << len(_SLOTS) + j for j, lane in enumerate(_TIMES)}
#: Then one bit: set, the other lanes are at their wide type (a count past 16 bits, cents past 32 bits, ...).
_WIDE_VALUES = 1 << len(_SLOTS) + len(_TIMES)
HEADER = 10  # bytes of those 77 bits, after the format byte
FORMAT = 11
SPAN = 1 << 32  # a time stored in 32 bits lies less than this before last_time (as of: after it)
LOW32 = SPAN - 1


class _Lanes:
    """Every lane packed at its narrow or its wide type: what ``encode`` packs first, and its masks.

    With x the packed lanes read as one integer, XOR the defaults' bits, ``((x & low) + low | x) & top`` has the top
    bit of a lane set when the lane is not zero, i.e. differs from its default (the sum never carries out of a lane):
    which fields are present, in a few operations on one integer instead of a Python test per field.
    """

    def __init__(self, wide: bool) -> None:
        self.types = [spec.wide if wide else spec.narrow for spec in _LANE_SPEC]
        self.sizes = [struct.calcsize(t) for t in self.types]  # bytes of each lane
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
        if i in TIME_BITS:
            types.append("q" if flags & TIME_BITS[i] else "I")
        else:
            types.append(_LANE_SPEC[i].wide if flags & _WIDE_VALUES else _LANE_SPEC[i].narrow)
    return types


class _Encoder:
    """How ``encode`` writes the states whose present lanes are these (``nonzero``: the lanes' top bits)."""

    __slots__ = ("flags", "head", "lanes", "packed", "runs", "time_bits", "times", "variants")

    def __init__(self, packed: _Lanes, nonzero: int) -> None:
        slots = sorted({_SLOT_OF[i] for i, b in enumerate(packed.tops) if nonzero >> b & 1})
        lanes = self.lanes = _lanes(slots)
        self.packed = packed
        self.flags = sum(1 << n for n in slots) | packed.flag
        # The times of events folded that are stored, to check they lie within 32 bits of last_time.
        times = set(lanes).intersection(BACK)
        types = zip(packed.types, packed.sizes, strict=True)
        self.times = struct.Struct("<" + "".join(t if i in times else f"{n}x" for i, (t, n) in enumerate(types)))
        #: The header bit of each of those times, in the order ``times`` unpacks them (a time stored whole).
        self.time_bits = tuple(TIME_BITS[i] for i in sorted(times))
        self.variants: dict[int, tuple[bytes, struct.Struct]] = {}
        self.head, self.runs = self.variant(0)  # every time in 32 bits: the usual case

    def variant(self, wide_times: int) -> tuple[bytes, struct.Struct]:
        """The format byte and header, and the body: runs of the packed lanes' bytes (little-endian: a time's low 32
        bits are its first 4 bytes), with pad bytes skipping the lanes left out and the high bits of the times."""
        flags = self.flags | wide_times
        runs: list[list] = []  # [kept, bytes]
        lanes = set(self.lanes)
        for i, size in enumerate(self.packed.sizes):
            if i not in lanes:
                parts = [(False, size)]
            elif i in TIME_BITS and not wide_times & TIME_BITS[i]:
                parts = [(True, 4), (False, 4)]
            else:
                parts = [(True, size)]
            for kept, n in parts:
                if runs and runs[-1][0] == kept:
                    runs[-1][1] += n
                else:
                    runs.append([kept, n])
        found = self.variants[wide_times] = (
            bytes([FORMAT]) + flags.to_bytes(HEADER, "little"),
            struct.Struct("<" + "".join(f"{n}s" if kept else f"{n}x" for kept, n in runs)),
        )
        return found


LANES_NARROW, LANES_WIDE = _Lanes(wide=False), _Lanes(wide=True)
#: What an absent lane decodes to: its default, found after the body's values by index (see :class:`_Decoder`).
TAIL = (0, -1, 0.0, _NAN)


def _default_at(default: float) -> int:
    """The position of a lane's default in :data:`TAIL` (0 and 0.0 are equal keys: matched by type)."""
    if isinstance(default, float):
        return 2 if default == 0.0 else 3
    return 0 if default == 0 else 1


#: Each field in format 7's order: its lane, and where its default lies in :data:`TAIL`.
_EXPAND = tuple((_LANE[name], _default_at(_LANE_SPEC[_LANE[name]].default)) for name in _FORMAT_7)


class _Decoder:
    """How ``decode`` reads a format 11 body with this header: its layout, its times, where each field is."""

    __slots__ = ("ahead", "back", "body", "expand", "last", "size")

    def __init__(self, header: bytes) -> None:
        flags = int.from_bytes(header, "little")
        lanes = _lanes([n for n in range(len(_SLOTS)) if flags >> n & 1])
        self.body = struct.Struct("<" + "".join(_body(lanes, flags)))
        self.size = self.body.size
        self.last = lanes.index(_LAST_TIME)
        self.back = tuple(lanes.index(i) for i in BACK if i in lanes and not flags & TIME_BITS[i])
        self.ahead = () if flags & TIME_BITS[AS_OF] else (lanes.index(AS_OF),)
        # Every field in format 7's order, from the body's values followed by TAIL (an absent one: its default).
        at = {lane: n for n, lane in enumerate(lanes)}
        n = len(lanes)
        self.expand = itemgetter(*[at.get(lane, n + default) for lane, default in _EXPAND])


#: The decoders built, by header (:func:`decoder_for` adds to it; past :data:`_CACHED`, it starts over).
DECODERS: dict[bytes, _Decoder] = {}


def decoder_for(header: bytes) -> _Decoder:
    """The decoder of a format 11 body with this header, built and kept in :data:`DECODERS`."""
    if len(DECODERS) >= _CACHED:
        DECODERS.clear()
    found = DECODERS[header] = _Decoder(header)
    return found
