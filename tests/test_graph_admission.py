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


def test_graph_cache_declines_what_admission_refuses():
    """kilnrt.engine.cudagraph.GraphCache itself (graph entries stood in for, no GPU): a full
    cache, by count or by bytes, runs a refused shape set without a graph and counts it."""
    from types import SimpleNamespace

    from kilnrt.engine.cudagraph import GraphCache, GraphCacheConfig

    runs = []
    program = SimpleNamespace(execute=lambda feeds: runs.append(dict(feeds)) or {"y": feeds["x"]})
    cache = GraphCache(program, GraphCacheConfig(max_graphs=2, max_bytes=1 << 30), pool=object())
    cache.graphs.update({("a",): "graph a", ("b",): "graph b"})
    for key in (("a",), ("a",), ("b",)):
        cache.admission.seen(key)
    assert cache.run({"x": 7}, key=("c",)) == {"y": 7} and runs == [{"x": 7}]
    assert cache.stats.declined == 1 and cache.stats.captures == 0 and list(cache.graphs) == [("a",), ("b",)]
    cache.admission.seen(("c",))
    assert not cache._admits(("c",))                   # asked for as often as 'a', the least recently used
    cache.admission.seen(("c",))
    assert cache._admits(("c",))                       # now more often
    # full by bytes with room by count
    roomy = GraphCache(program, GraphCacheConfig(max_graphs=8, max_bytes=100), pool=object())
    roomy.graphs[("a",)] = "graph a"
    roomy._bytes[("a",)] = 100
    roomy.admission.seen(("a",))
    assert not roomy._admits(("z",))
    # a cache of no graphs at all admits into an empty cache (the eviction keeps the newest)
    assert GraphCache(program, GraphCacheConfig(max_graphs=0), pool=object())._admits(("a",))


def test_graph_cache_gives_way_for_what_holds_no_graph_and_counts_the_next_graphs_bytes():
    """An entry that holds no graph (a shape set that could not be captured) is no reason to
    decline; and with graphs of 60 bytes under a limit of 100 the cache is full at one graph,
    not after a second has been captured (which would evict the first, and so on)."""
    from types import SimpleNamespace

    from kilnrt.engine.cudagraph import GraphCache, GraphCacheConfig

    program = SimpleNamespace(execute=lambda feeds: {"y": feeds["x"]})
    cache = GraphCache(program, GraphCacheConfig(max_graphs=1, max_bytes=1 << 30), pool=object())
    cache.graphs[("a",)] = None                       # could not be captured
    for _ in range(5):
        cache.admission.seen(("a",))
    assert cache._admits(("b",))
    big = GraphCache(program, GraphCacheConfig(max_graphs=8, max_bytes=100), pool=object())
    big.graphs[("a",)] = "graph a"
    big._bytes[("a",)] = 60
    big.admission.seen(("a",))
    big.admission.seen(("b",))
    assert not big._admits(("b",))                    # 60 + 60 > 100: full, and 'b' no more wanted than 'a'
    big.admission.seen(("b",))
    assert big._admits(("b",))
