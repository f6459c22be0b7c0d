"""The alert episodes of one customer and their bytes: :class:`AlertState`, 26 bytes inside the customer's state.

:mod:`scoring.alerts` holds the rules (:class:`scoring.alerts.AlertRules`) that decide when an episode opens and
closes; this module holds what they remember between scorings and how it is stored: which episodes are open, since
or until when, the P(alive) and the high-value spell the rules compare against, the byte layout (and cvm 0.1's,
still read). The rule names live here, since their order is the order of the episode bits and times. This module
imports nothing of :mod:`scoring.alerts`, so there is no import cycle.

>>> state = AlertState()
>>> state.open_episode(RULES.index(P_ALIVE_DROP), 1_772_409_600)
>>> state.open_rules, len(state.to_bytes()), AlertState.from_bytes(state.to_bytes()) == state
(('p_alive_drop',), 26, True)
"""

from __future__ import annotations

import struct

__all__ = ["RULES", "AlertState"]

HIGH_VALUE_AT_RISK = "high_value_at_risk"
P_ALIVE_DROP = "p_alive_drop"
CANCELLATION_REQUEST = "cancellation_request"

#: Every rule, in the order of their bits in :attr:`AlertState.open` and of the alerts one evaluation returns.
RULES = (HIGH_VALUE_AT_RISK, P_ALIVE_DROP, CANCELLATION_REQUEST)

_MAX_U32 = 0xFFFF_FFFF
_UNKNOWN_P = 0xFFFF
# format, open bits, per-rule time, time P(alive) was last high, last P(alive), time last of high value, the highest
# value percentile (1/10000) of that high-value spell
_STATE = struct.Struct("<BB3IIHIH")
_STATE_V1 = struct.Struct("<BB3IIH")  # cvm <= 0.1: no value fields
_PACK = _STATE.pack
_TIER_A_BIT = 0x8000  # in the value percentile field: tier A in the high-value spell
_FORMAT_VERSION = 2


def _seconds(ms: int, up: bool = False) -> int:
    """Epoch seconds as a uint32 (1970–2106), rounded down, or up (``up``) for the end of an episode."""
    s = -(-ms // 1000) if up else ms // 1000
    return 0 if s < 0 else _MAX_U32 if s > _MAX_U32 else s  # not min/max: once per evaluation, calls cost more


class AlertState:
    """One customer's alert episodes: which are open, and since/until when (26 bytes as :meth:`to_bytes`).

    ``open`` has bit ``i`` set while the episode of ``RULES[i]`` is open. ``times[i]`` is in epoch seconds: while
    open, the episode's start (for ``cancellation_request``: the latest request it covers); once closed, its end,
    from which the cooldown counts; 0 means never. ``high_time`` is the last time P(alive) was at or above the
    "high" mark (0: not since the last drop alert), and ``last_p_alive`` the P(alive) of the previous scoring.
    ``value_time`` is the last scoring at which the customer was of high value (epoch seconds, 0: never),
    ``value_pct`` the highest CLV percentile it had in that high-value spell (the value at stake) and ``value_a``
    whether it was in tier A in that spell.

    >>> AlertState.from_bytes(b"") == AlertState()  # a customer that never had any: no bytes needed yet
    True
    """

    __slots__ = ("open", "times", "high_time", "last_p_alive", "value_time", "value_pct", "value_a")

    #: Bytes of :meth:`to_bytes`, for a caller packing the state inside its own.
    SIZE = _STATE.size

    def __init__(self) -> None:
        self.open = 0
        self.times = [0, 0, 0]
        self.high_time = 0
        self.last_p_alive: float | None = None
        self.value_time = 0
        self.value_pct = 0.0
        self.value_a = False

    @property
    def open_rules(self) -> tuple[str, ...]:
        """The rules whose episode is open."""
        return tuple(rule for i, rule in enumerate(RULES) if self.open >> i & 1)

    def to_bytes(self) -> bytes:
        # Written after every scoring of a tick: clamped with comparisons, not min/max calls (less than half the time;
        # the same values, NaN included).
        p = self.last_p_alive
        p = _UNKNOWN_P if p is None else round((0.0 if p < 0.0 else 1.0 if p > 1.0 else p) * 10_000)
        v = self.value_pct
        v = round((0.0 if v < 0.0 else 1.0 if v > 1.0 else v) * 10_000) | (_TIER_A_BIT if self.value_a else 0)
        t0, t1, t2 = self.times
        return _PACK(_FORMAT_VERSION, self.open, t0, t1, t2, self.high_time, p, self.value_time, v)

    @classmethod
    def from_bytes(cls, data: bytes) -> AlertState:
        """The state :meth:`to_bytes` wrote (this format or cvm 0.1's); empty bytes give a fresh state."""
        state = cls()
        if not data:
            return state
        if data[0] == _FORMAT_VERSION:
            _, state.open, t0, t1, t2, state.high_time, p, state.value_time, v = _STATE.unpack_from(data)
            state.value_pct = (v & ~_TIER_A_BIT) / 10_000
            state.value_a = bool(v & _TIER_A_BIT)
        elif data[0] == 1:
            _, state.open, t0, t1, t2, state.high_time, p = _STATE_V1.unpack_from(data)
        else:
            raise ValueError(f"unknown alert state format {data[0]}")
        state.times = [t0, t1, t2]
        state.last_p_alive = None if p == _UNKNOWN_P else p / 10_000
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AlertState):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    def __repr__(self) -> str:
        return (
            f"AlertState(open={self.open_rules}, times={self.times}, high_time={self.high_time}, "
            f"value_time={self.value_time}, value_pct={self.value_pct}, value_a={self.value_a})"
        )

    def open_episode(self, i: int, start_s: int) -> None:
        """Open the episode of ``RULES[i]``, started at ``start_s`` (epoch seconds)."""
        self.open |= 1 << i
        self.times[i] = start_s

    def close_episode(self, i: int, end_s: int) -> None:
        """Close the episode of ``RULES[i]``, ended at ``end_s``: the cooldown counts from there."""
        self.open &= ~(1 << i)
        self.times[i] = min(max(end_s, 0), _MAX_U32)

    def cooled(self, i: int, now_s: int, cooldown_s: int) -> bool:
        """True when ``RULES[i]`` never had an episode, or its last one ended at least ``cooldown_s`` ago.

        At least one second in any case: an episode that closes and opens again within the same event time (a
        batch of older events moves the scores, not the stream time) would otherwise repeat its episode id.
        """
        return self.times[i] == 0 or now_s >= self.times[i] + max(cooldown_s, 1)
