"""The tactic search of each builder optimization level (kilnrt/builder/search.py), with
made-up tactics and a made-up clock, so what is timed, how often and what wins is exact."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import kilnrt
from kilnrt.builder import search
from kilnrt.builder.search import SEARCH, choose_tactic, search_for_level
from kilnrt.builder.timing import TimingCache
from kilnrt.errors import BuildError
from kilnrt.kernels.registry import Tactic, TacticContext
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import ActivationParams, ActivationType, LayerKind


class Gemm(Tactic):
    """Stands for a family of tile configurations (one class, many instances)."""
    kind = LayerKind.ACTIVATION
    device = "cuda"

    def __init__(self, name: str, log: list, fails: bool = False) -> None:
        self.name, self.log, self.fails = name, log, fails

    def run(self, state, inputs):
        if self.fails:
            raise RuntimeError("no kernel image for this device")
        self.log.append(self.name)
        return [inputs[0]]


class Library(Gemm):
    """Another tactic class (a vendor library)."""


class Clock:
    """``time_callable`` stand-in: runs the timed call once and returns that tactic's next time."""

    def __init__(self, log: list, times: dict[str, list[float]]) -> None:
        self.log, self.times, self.samples = log, {k: list(v) for k, v in times.items()}, []

    def __call__(self, fn, device, iters=10):
        fn()
        name = self.log[-1]
        self.samples.append((name, iters))
        seq = self.times[name]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    def timed(self) -> list[str]:
        return [name for name, _ in self.samples]


@pytest.fixture
def setup(monkeypatch):
    def make(times: dict[str, list[float]], failing: tuple[str, ...] = ()):
        log: list = []
        cands = [Gemm("gemm_a", log, "gemm_a" in failing), Gemm("gemm_b", log, "gemm_b" in failing),
                 Library("lib", log, "lib" in failing), Gemm("gemm_c", log, "gemm_c" in failing)]
        clock = Clock(log, times)
        monkeypatch.setattr(search, "time_callable", clock)
        net = Network()
        x = net.add_input("x", DataType.HALF, (2, 3))
        layer = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [x])
        ins = [torch.randn(2, 3)]
        ctx = TacticContext(torch.device("cpu"), {})
        return lambda level, cache=None: choose_tactic(layer, cands, ctx, ins, cache, "cuda", SEARCH[level]), clock
    return make


TIMES = {"gemm_a": [1.0], "gemm_b": [0.8], "lib": [0.9], "gemm_c": [0.5]}


def test_level_0_times_nothing_and_takes_the_first_tactic_that_runs(setup):
    choose, clock = setup(TIMES, failing=("gemm_a",))
    chosen, timings = choose(0)
    assert chosen.name == "gemm_b"  # registry order; gemm_a fails on the example inputs
    assert timings == {} and clock.samples == []


def test_level_1_times_one_configuration_per_tactic_class(setup):
    choose, clock = setup(TIMES)
    chosen, timings = choose(1)
    assert set(timings) == {"gemm_a", "lib"} and chosen.name == "lib"
    assert clock.samples == [("gemm_a", 5), ("lib", 5)]


@pytest.mark.parametrize("level,samples", [(2, 5), (3, 10)])
def test_levels_2_and_3_time_every_candidate(setup, level, samples):
    choose, clock = setup(TIMES)
    chosen, timings = choose(level)
    assert chosen.name == "gemm_c" and timings == {k: v[0] for k, v in TIMES.items()}
    assert clock.samples == [(n, samples) for n in ("gemm_a", "gemm_b", "lib", "gemm_c")]


def test_a_tactic_that_fails_is_skipped(setup):
    choose, _ = setup(TIMES, failing=("gemm_c",))
    chosen, timings = choose(3)
    assert chosen.name == "gemm_b" and "gemm_c" not in timings


# gemm_c's first sample is a lucky outlier; gemm_b is steadily faster; lib sits 20% behind
NOISY = {"gemm_a": [1.5], "gemm_b": [0.53, 0.53, 0.53, 0.53, 0.53], "lib": [0.6, 0.6, 0.6, 0.6, 0.6],
         "gemm_c": [0.5, 0.7, 0.7, 0.7, 0.7]}


def test_level_3_trusts_one_measurement(setup):
    choose, _ = setup(NOISY)
    assert choose(3)[0].name == "gemm_c"


def test_level_4_times_the_close_calls_again(setup):
    choose, clock = setup(NOISY)
    chosen, timings = choose(4)
    assert chosen.name == "gemm_b"
    assert timings["gemm_c"] == pytest.approx(0.7) and timings["gemm_b"] == pytest.approx(0.53)
    again = clock.timed()[4:]
    assert sorted(again) == ["gemm_b", "gemm_b", "gemm_c", "gemm_c"]  # within 10%: not lib, not gemm_a
    assert again[:2] == ["gemm_c", "gemm_b"] and again[2:] == ["gemm_b", "gemm_c"]  # alternating order


def test_level_5_looks_wider_and_longer(setup):
    choose, clock = setup(NOISY)
    chosen, timings = choose(5)
    assert chosen.name == "gemm_b"
    again = clock.timed()[4:]
    assert sorted(set(again)) == ["gemm_b", "gemm_c", "lib"] and len(again) == 3 * 4


def test_cached_timings_are_used_and_close_calls_refined_into_the_cache(setup):
    cache = TimingCache()
    choose, _ = setup(NOISY)
    assert choose(3, cache)[0].name == "gemm_c" and len(cache.entries) == 4
    choose, clock = setup(NOISY)
    assert choose(3, cache)[0].name == "gemm_c" and clock.samples == []  # all from the cache
    choose, clock = setup({"gemm_a": [1.5], "gemm_b": [0.53], "lib": [0.6], "gemm_c": [0.7]})
    assert choose(4, cache)[0].name == "gemm_b"  # gemm_c's cached 0.5 was the outlier
    assert sorted(set(clock.timed())) == ["gemm_b", "gemm_c"]
    by_tactic = {key.rsplit("|", 1)[1]: ms for key, ms in cache.entries.items()}
    assert by_tactic == pytest.approx({"gemm_a": 1.5, "gemm_b": 0.53, "lib": 0.6, "gemm_c": 0.7})
    choose, clock = setup(NOISY)
    assert choose(3, cache)[0].name == "gemm_b" and clock.samples == []  # the refined times stay


def test_candidates_to_run_are_what_choose_tactic_runs(monkeypatch):
    """What the parallel-compile pass (kilnrt/builder/precompile.py) runs ahead of timing: the
    candidates without a cached timing plus the fastest cached one, and whether any is timed."""
    log: list = []
    cands = [Gemm("gemm_a", log), Gemm("gemm_b", log), Library("lib", log), Gemm("gemm_c", log)]
    monkeypatch.setattr(search, "time_callable", Clock(log, TIMES))
    net = Network()
    layer = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU),
                          [net.add_input("x", DataType.HALF, (2, 3))])
    ins = [torch.randn(2, 3)]
    ctx = TacticContext(torch.device("cpu"), {})
    cache = TimingCache()
    names = lambda run: [c.name for c in run[0]]  # noqa: E731
    assert names(search.candidates_to_run(layer, cands, ins, cache, "cuda", SEARCH[3])) == \
        ["gemm_a", "gemm_b", "lib", "gemm_c"]
    assert names(search.candidates_to_run(layer, cands, ins, cache, "cuda", SEARCH[1])) == ["gemm_a", "lib"]
    choose_tactic(layer, cands, ctx, ins, cache, "cuda", SEARCH[3])
    run, timed = search.candidates_to_run(layer, cands, ins, cache, "cuda", SEARCH[3])
    assert [c.name for c in run] == ["gemm_c"] and not timed        # all cached: only the winner runs
    del cache.entries[next(k for k in cache.entries if k.endswith("|gemm_b"))]
    run, timed = search.candidates_to_run(layer, cands, ins, cache, "cuda", SEARCH[3])
    assert [c.name for c in run] == ["gemm_b", "gemm_c"] and timed
    log.clear()
    choose_tactic(layer, cands, ctx, ins, cache, "cuda", SEARCH[3])
    assert sorted(set(log)) == ["gemm_b"]   # choose_tactic timed exactly the uncached one


@pytest.mark.parametrize("level", [-1, 6, 2.5, True, "3"])
def test_a_bad_level_is_refused_before_any_work(level):
    with pytest.raises(BuildError, match="from 0 to 5"):
        search_for_level(level)
    net = Network()
    x = net.add_input("x", DataType.FLOAT, (2, 3))
    net.mark_output(net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [x]).outputs[0])
    config = kilnrt.BuilderConfig()
    config.builder_optimization_level = level
    with pytest.raises(BuildError, match="optimization level"):
        kilnrt.Builder().build_engine_with_config(net, config)


@pytest.mark.parametrize("level", range(6))
def test_every_level_builds_and_runs(level):
    net = Network()
    x = net.add_input("x", DataType.FLOAT, (2, 3))
    net.mark_output(net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [x]).outputs[0])
    feed = torch.randn(2, 3)
    out = kilnrt.build(net, optimization_level=level).run({"x": feed})
    assert torch.equal(next(iter(out.values())), feed.clamp(min=0))


def test_timing_cache_keeps_written_layouts_and_refuses_malformed_ones():
    cache = TimingCache({"k|gpu|v|t": 0.5}, {"k|gpu|v|t": [True, None]})
    again = TimingCache.deserialize(cache.serialize())
    assert again.entries == cache.entries and again.formats == {"k|gpu|v|t": [True, None]}
    old = b'{"format": "kilnrt-timing-cache", "version": 1, "entries": {"a": 1.0}}'
    dropped = TimingCache.deserialize(old)                      # keyed otherwise: nothing reused
    assert dropped.entries == {} and dropped.formats == {}
    with pytest.raises(ValueError, match="formats"):
        TimingCache.deserialize(b'{"format": "kilnrt-timing-cache", "version": 2, "entries": {}, '
                                b'"formats": {"a": [2]}}')
    merged = TimingCache()
    merged.combine(again)
    assert merged.formats == again.formats
    merged.reset()
    assert merged.formats == {} and merged.entries == {}


def test_kernel_discovery_runs_a_repeated_layer_once_and_a_warm_build_nothing(monkeypatch):
    """kilnrt/builder/precompile.py with the compile pool and the GPU stood in for: a layer
    just like one already run (same kind, params, inputs and candidates) is not run again; once
    the timing cache holds every candidate's time and the winners' written layouts, nothing
    is run at all; a layer of other params is run in both builds' first pass."""
    import contextlib

    from kilnrt.builder import precompile as pre
    from kilnrt.builder.examples import example_inputs
    from kilnrt.kernels import compile_pool

    log: list = []
    cands = [Gemm("gemm_a", log), Library("lib", log)]
    monkeypatch.setattr(pre, "tactics_for", lambda layer, device, ctx: cands)
    monkeypatch.setattr(compile_pool, "available", lambda: True)
    monkeypatch.setattr(compile_pool, "discover", lambda: contextlib.nullcontext(object()))
    monkeypatch.setattr(compile_pool, "compile_all", lambda found, workers: {"kernels": 0})
    net = Network()
    x = net.add_input("x", DataType.HALF, (2, 8, 4, 4))
    a = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [x])
    b = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.RELU), [a.outputs[0]])
    c = net.add_layer(LayerKind.ACTIVATION, ActivationParams(ActivationType.SIGMOID), [b.outputs[0]])
    net.mark_output(c.outputs[0])
    shapes = {t.name: ((2, 8, 4, 4), DataType.HALF) for t in (x, a.outputs[0], b.outputs[0], c.outputs[0])}
    config = kilnrt.BuilderConfig()
    config.device = "cuda"
    ctx = TacticContext(torch.device("cpu"), {})
    cache = TimingCache()

    stats = pre.precompile(net, config, shapes, ctx, SEARCH[3], cache, workers=2)
    assert stats["repeated_layers"] == 1 and stats["discovery_runs"] == 4 and len(log) == 4
    assert stats["timed_layers"] == 2

    for layer in (a, c):   # what the timing pass leaves in the cache: every time, the winner's layouts
        ins = example_inputs(layer, ctx, shapes, {})
        key = search.example_signature(layer, ins)
        for cand in cands:
            cache.put(TimingCache.key(key, "cuda", cand.name), 0.5 if cand.name == "lib" else 1.0)
        cache.formats[TimingCache.key(key, "cuda", "lib")] = [False]
    log.clear()
    stats = pre.precompile(net, config, shapes, ctx, SEARCH[3], cache, workers=2)
    assert stats["discovery_runs"] == 0 and log == [] and stats["timed_layers"] == 0

    del cache.formats[TimingCache.key(search.example_signature(c, example_inputs(c, ctx, shapes, {})), "cuda", "lib")]
    stats = pre.precompile(net, config, shapes, ctx, SEARCH[3], cache, workers=2)
    assert stats["discovery_runs"] == 1 and log == ["lib"]   # only the cached winner whose layouts are unknown

    # a layer like one already run but with other candidates (another tactic supports it) is run
    more = cands + [Gemm("gemm_extra", log)]
    monkeypatch.setattr(pre, "tactics_for", lambda layer, device, ctx: more if layer is b else cands)
    log.clear()
    stats = pre.precompile(net, config, shapes, ctx, SEARCH[3], TimingCache(), workers=2)
    assert stats["repeated_layers"] == 0 and log.count("gemm_extra") == 1 and len(log) == 7


def test_timing_key_tells_a_constant_input_from_an_activation():
    """Two products of the same shapes, one with a constant weight and one with an activation:
    a tactic may prepare a constant ahead (or need one), so their timings are kept apart."""
    from kilnrt.network.layers import ConstantParams, MatrixMultiplyParams

    net = Network()
    x = net.add_input("x", DataType.HALF, (4, 8))
    y = net.add_input("y", DataType.HALF, (8, 8))
    w = net.add_layer(LayerKind.CONSTANT, ConstantParams(np.ones((8, 8), np.float16)), []).outputs[0]
    weighted = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), [x, w])
    multiplied = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(), [x, y])
    ins = [torch.randn(4, 8).half(), torch.randn(8, 8).half()]
    assert search.example_signature(weighted, ins) != search.example_signature(multiplied, ins)


def test_builder_follows_a_channel_shuffle_through_its_5d_view():
    """The builder's example inputs follow each producer's written layout through views of any
    rank: ShuffleNet's reshape to 5-D and transpose leave a permuted 5-D view, whose memory
    order is recorded, and the reshape back to 4-D (a copy) is timed on such a view, not on a
    dense 5-D tensor that it would only view."""
    from kilnrt.api import to_network
    from kilnrt.builder.examples import example_inputs, output_format, written_layouts
    from kilnrt.kernels.cpu.shape import shuffle
    from kilnrt.network.infer import concrete_shapes
    from kilnrt.optimize import optimize
    from tests.models import shuffle_block_model

    net = optimize(to_network(shuffle_block_model(np.random.default_rng(0)).SerializeToString()), 3)
    net.infer()
    shapes = concrete_shapes(net, {})
    ctx = TacticContext(torch.device("cpu"), {})
    layouts = {"cat": True}                       # the concatenation of two NHWC convolutions
    shuffles = [l for l in net.layers if l.kind == LayerKind.SHUFFLE]
    assert [l.outputs[0].name for l in shuffles] == ["grouped", "swapped", "shuffled"]
    for layer in shuffles:
        ins = example_inputs(layer, ctx, shapes, layouts)
        out = shuffle(layer.params, *ins)
        layouts[layer.outputs[0].name] = written_layouts([out])[0]
    assert isinstance(layouts["swapped"], tuple)   # a permuted 5-D view, not row-major
    assert layouts["shuffled"] is False and output_format(layouts["shuffled"]) == "linear"
    assert output_format(layouts["swapped"]) is None and output_format(True) == "channels_last"
    # the keys of two 5-D inputs that differ only in memory order differ
    swapped = next(l for l in shuffles if l.outputs[0].name == "shuffled")
    permuted = example_inputs(swapped, ctx, shapes, layouts)
    dense = example_inputs(swapped, ctx, shapes, {})
    assert not permuted[0].is_contiguous() and dense[0].is_contiguous()
    assert search.example_signature(swapped, permuted) != search.example_signature(swapped, dense)


def test_timing_cache_keeps_memory_orders():
    cache = TimingCache({"k": 0.5}, {"k": [True, (0, 2, 1, 3, 4), None]})
    again = TimingCache.deserialize(cache.serialize())
    assert again.formats == {"k": [True, (0, 2, 1, 3, 4), None]}
    for bad in ('[[0, 0]]', '[[1, 2]]', '[[0, true]]', '[2]'):
        with pytest.raises(ValueError, match="formats"):
            TimingCache.deserialize(('{"format": "kilnrt-timing-cache", "version": 2, "entries": {}, "formats": {"a": %s}}'
                                     % bad).encode())
