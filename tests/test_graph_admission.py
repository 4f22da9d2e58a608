"""kilnrt.engine.graph_admission: a full CUDA-graph cache admits a shape set only when it was
asked for more often than the graph it would evict.  Simulated here with the same LRU order
as kilnrt.engine.cudagraph.GraphCache (its GPU test: tests/test_cuda_call_path.py)."""
from __future__ import annotations

import random
from collections import OrderedDict

from kilnrt.engine.graph_admission import Admission


def _simulate(keys, capacity, admission=True):
    """(captures, declined) of an LRU cache of ``capacity`` that captures on a miss when it has
    room, or (with ``admission``) when the newcomer beats the least recently used entry."""
    cache, counts = OrderedDict(), Admission(capacity)
    captures = declined = 0
    for key in keys:
        counts.seen(key)
        if key in cache:
            cache.move_to_end(key)
            continue
        if len(cache) >= capacity and admission and not counts.admits(key, next(iter(cache))):
            declined += 1
            continue
        captures += 1
        cache[key] = True
        while len(cache) > capacity:
            cache.popitem(last=False)
    return captures, declined


def test_a_cycle_longer_than_the_cache_stops_capturing():
    keys = list(range(64)) * 10                       # a dynamic batcher's every size, cycled
    assert _simulate(keys, 32, admission=False) == (640, 0)
    assert _simulate(keys, 32) == (32, 320)


def test_what_is_asked_for_now_wins_over_what_was():
    old, new = list(range(8)), list(range(100, 108))
    keys = old * 20 + new * 20
    captures, declined = _simulate(keys, 8)
    assert captures == 16 and declined < 8 * 20      # the new shapes get in, within their first rounds
    # a hot shape among rare ones: plain LRU captures for nearly every rare shape
    rnd = random.Random(0)
    keys = [0 if rnd.random() < 0.5 else rnd.randrange(1, 1000) for _ in range(5000)]
    assert _simulate(keys, 4)[0] * 5 < _simulate(keys, 4, admission=False)[0]


def test_counts_are_halved_every_window():
    a = Admission(4)
    assert a.window == 64
    for _ in range(6):
        a.seen("hot")
    for k in range(58):
        a.seen(k)
    assert a.counts == {"hot": 3}                    # halved after 64 requests; ones dropped
    assert a.admits("hot", "cold") and not a.admits("cold", "hot") and not a.admits("x", "y")
