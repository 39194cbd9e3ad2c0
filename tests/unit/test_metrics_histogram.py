"""The statistics' log-linear latency buckets as Prometheus histogram buckets: the count at
each power-of-two bound is exact (the latencies below it), and the estimated sum is within
the buckets' resolution."""
from __future__ import annotations

import random

from pyvirtiofsd.metrics import LE_US, _cumulative
from pyvirtiofsd.stats import LatencyHistogram


def test_bucket_counts_are_exact_at_every_bound():
    edges = [v for k in range(26) for v in ((1 << k) - 1, 1 << k, (1 << k) + 1)]
    rng = random.Random(13)
    values = [0, *edges, *(rng.randrange(1 << 26) for _ in range(2000)),
              *(rng.randrange(200) for _ in range(500)), 1 << 27]
    h = LatencyHistogram()
    for us in values:
        h.add(us)
    buckets, _ = _cumulative(h.counts)
    assert [le for le, _ in buckets] == list(LE_US)
    for le, n in buckets:
        assert n == sum(1 for us in values if us < le), le


def test_estimated_sum_is_within_the_bucket_resolution():
    rng = random.Random(7)
    for _ in range(20):
        values = [rng.randrange(32, 1 << rng.randrange(6, 25)) for _ in range(300)]
        h = LatencyHistogram()
        for us in values:
            h.add(us)
        _, total = _cumulative(h.counts)
        assert abs(total - sum(values)) <= 0.035 * sum(values)
    h = LatencyHistogram()
    for us in range(32):            # below 32 µs every value has its own bucket
        h.add(us)
    assert _cumulative(h.counts)[1] == sum(range(32))


def test_empty_histogram():
    buckets, total = _cumulative({})
    assert total == 0 and all(n == 0 for _, n in buckets)
