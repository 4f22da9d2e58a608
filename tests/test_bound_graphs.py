"""The bound-buffer graph cache's bookkeeping (kilnrt/engine/cudagraph.py), without a GPU;
tests/test_cuda_call_path.py runs the graphs themselves."""
from __future__ import annotations


def test_a_new_program_drops_only_its_profiles_bound_graphs():
    """BoundGraphs.use (logic only, no GPU needed): a refit's new program invalidates the graphs
    of its profile, not those of the other profiles."""
    from collections import OrderedDict

    from kilnrt.engine.cudagraph import BoundGraphs

    cache = object.__new__(BoundGraphs)
    cache.graphs, cache._programs = OrderedDict(), {}
    old, new, other = object(), object(), object()
    cache.use(0, old)
    cache.use(1, other)
    cache.graphs.update({(0, id(old), "a"): "g0", (1, id(other), "b"): "g1"})
    cache.use(0, old)
    assert len(cache.graphs) == 2
    cache.use(0, new)
    assert list(cache.graphs.values()) == ["g1"]
    cache.use(1, other)
    assert list(cache.graphs.values()) == ["g1"]
