"""Population percentiles: the histogram moves of one customer, against the plain -1/+1 reference."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.population import METRICS, Population, _bucket


def reference_update(counts: Counter[int], metric: str, old: float | None, new: float | None) -> None:
    """The plain move: leave the old bucket, enter the new one."""
    if old is not None:
        b = _bucket(metric, old)
        counts[b] -= 1
        if counts[b] <= 0:
            del counts[b]
    if new is not None:
        counts[_bucket(metric, new)] += 1


values = st.one_of(st.none(), st.integers(-5, 5).map(float), st.floats(-1e6, 1e6), st.integers(0, 40))
moves = st.lists(st.tuples(st.sampled_from(METRICS), values, values), max_size=60)


@settings(max_examples=200, deadline=None)
@given(moves=moves)
def test_update_moves_like_the_reference_even_from_an_absent_bucket(moves: list) -> None:
    pop = Population()
    want: dict[str, Counter[int]] = {m: Counter() for m in METRICS}
    for metric, old, new in moves:  # old values need not have been counted (a table the population never saw)
        pop.update(metric, old, new)
        reference_update(want[metric], metric, old, new)
        assert dict(pop.counts[metric]) == dict(want[metric])


@settings(max_examples=100, deadline=None)
@given(moves=moves, probe=st.floats(-1e6, 1e6))
def test_percentile_of_the_value_just_counted_is_that_of_any_equal_value(moves: list, probe: float) -> None:
    pop = Population()
    for metric, old, new in moves:
        pop.update(metric, old, new)
    pop.freeze()
    fresh = Population()
    fresh.counts, fresh._frozen = pop.counts, pop._frozen  # the same frozen view
    for metric in METRICS:
        pop.update(metric, None, probe)  # counted after the freeze: ranks stay those of the frozen view
        assert pop.percentile(metric, probe) == fresh.percentile(metric, probe)
        assert pop.percentile(metric, probe + 1.0) == fresh.percentile(metric, probe + 1.0)


rows = st.dictionaries(st.sampled_from(METRICS), values)


@settings(max_examples=200, deadline=None)
@given(moves=st.lists(st.tuples(rows, rows), max_size=30))
def test_move_is_an_update_per_metric_even_from_an_absent_bucket(moves: list) -> None:
    pop, want = Population(), Population()
    for old, new in moves:  # old values need not have been counted
        pop.move(old, new)
        for metric, value in new.items():
            want.update(metric, old.get(metric), value)
        assert pop.counts == want.counts
    pop.freeze()
    want.freeze()
    assert pop._frozen == want._frozen


def _reference_percentile(counts: Counter[int], metric: str, value: float) -> float:
    """The percentile as the population computed it before its views were kept between freezes: a table of each
    bucket's mid-rank, built afresh from the counts."""
    keys = sorted(counts)
    below, total = [], 0
    for k in keys:
        below.append(total)
        total += counts[k]
    if not total:
        return 0.5
    mid = {k: (b + counts[k] / 2) / total for k, b in zip(keys, below, strict=True)}
    b = _bucket(metric, value)
    if b in mid:
        return mid[b]
    i = bisect_left(keys, b)
    return (below[i] if i < len(keys) else total) / total


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.lists(st.tuples(st.sampled_from(METRICS), values, values), max_size=8), max_size=12),
    probes=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=5),
)
def test_views_kept_between_freezes_rank_as_views_built_afresh(steps: list, probes: list) -> None:
    """Freezes after a few moves each (as ticks come): a view whose buckets did not change keeps their order, and
    must give every percentile, bit for bit, that a table built afresh from the counts at that freeze gives."""
    pop = Population()
    for moves in steps:
        for metric, old, new in moves:
            pop.update(metric, old, new)
        pop.freeze()
        snapshot = {m: Counter(pop.counts[m]) for m in METRICS}
        for metric in METRICS:
            for v in probes:
                for probe in (v, float(int(v)), *(k for k in list(snapshot[metric])[:3])):
                    assert pop.percentile(metric, probe) == _reference_percentile(snapshot[metric], metric, probe)
