"""Tensor manipulation, indexing and data-dependent ops: one tiny ONNX model per case, run
through kilnrt and compared with onnx's ReferenceEvaluator on fresh seeded inputs.

"Shape-like" operands (shapes, axes, pads, k, repeats, split sizes) are graph inputs here,
as in onnx's own suite, so the layers must read them at run time.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kilnrt
from kilnrt.errors import ImportErrors
from onnx_cases import one_node_model as model, randn, rng

F, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def check(op: str, feeds: dict[str, np.ndarray], n_out: int = 1, opset: int = 18, shapes=None,
          reference: str = "onnx", **attrs):
    """Run a one-node model through kilnrt and the reference ("onnx": ReferenceEvaluator,
    "ort": onnxruntime); outputs must match in dtype, shape and values."""
    m = model(op, feeds, n_out, opset, shapes, **attrs)
    real = {k: v for k, v in feeds.items() if k}
    if reference == "ort":
        import onnxruntime

        sess = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, real)
    else:
        expected = ReferenceEvaluator(m).run(None, real)
    got = kilnrt.build(m).run(real)
    for i, want in enumerate(expected):
        have = got[f"y{i}"]
        assert have.dtype == want.dtype, f"output {i}: dtype {have.dtype} != {want.dtype}"
        assert have.shape == want.shape, f"output {i}: shape {have.shape} != {want.shape}"
        np.testing.assert_allclose(have.astype(np.float64), want.astype(np.float64), rtol=1e-5, atol=1e-6)
    return got


def i64(*values) -> np.ndarray:
    return np.asarray(values, np.int64)


# ----------------------------------------------------------------------------- reshaping
@pytest.mark.parametrize("shape,allowzero", [((4, 0, -1), 0), ((0, 3, 4, 2), 1), ((-1,), 0), ((2, 0, 2, 2), 0)])
def test_reshape_with_runtime_shape(shape, allowzero):
    r = rng()
    x = randn(r, 2, 3, 4) if 0 not in shape or not allowzero else randn(r, 0, 3, 8)
    check("Reshape", {"x": x, "s": i64(*shape)}, allowzero=allowzero)


@pytest.mark.parametrize("opset,attrs,sizes", [
    (11, {"axis": 1, "split": [1, 4, 3]}, None),
    (13, {"axis": -1}, i64(2, 0, 6)),          # sizes as a graph input, a zero-size part
    (18, {"axis": 1, "num_outputs": 3}, None),  # uneven: 3, 3, 2
    (13, {}, None),                             # equal parts along axis 0
])
def test_split(opset, attrs, sizes):
    r = rng()
    x = randn(r, 6, 8)
    feeds = {"x": x} if sizes is None else {"x": x, "split": sizes}
    n = len(attrs.get("split", sizes if sizes is not None else [])) or attrs.get("num_outputs", 2)
    check("Split", feeds, n_out=n, opset=opset, **attrs)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ((-1, 5), (-1000, 1), (0, 2), (-2, -1)),
    ((1, 0), (1000, 3), (-1, 1), (3, 1)),
    ((0,), (2,), None, None),
])
def test_slice_with_runtime_bounds(starts, ends, axes, steps):
    r = rng()
    feeds = {"x": randn(r, 5, 4, 7), "starts": i64(*starts), "ends": i64(*ends)}
    feeds["axes"] = i64(*axes) if axes is not None else np.zeros(0, np.int64)
    feeds["steps"] = i64(*steps) if steps is not None else np.zeros(0, np.int64)
    if axes is None:
        del feeds["axes"], feeds["steps"]
    check("Slice", feeds)


def test_squeeze_unsqueeze_with_runtime_axes():
    r = rng()
    check("Squeeze", {"x": randn(r, 1, 3, 1, 2), "axes": i64(-2, 0)})
    check("Unsqueeze", {"x": randn(r, 3, 2), "axes": i64(-1, 0, 2)})


def test_expand_tile_range_constant_of_shape_at_run_time():
    r = rng()
    check("Expand", {"x": randn(r, 3, 1), "shape": i64(2, 1, 4)})
    check("Tile", {"x": randn(r, 2, 3), "repeats": i64(3, 2)})
    check("Range", {"start": np.float32(1.5), "limit": np.float32(-4.0), "delta": np.float32(-0.75)})
    check("Range", {"start": np.int32(-3), "limit": np.int32(10), "delta": np.int32(4)})
    value = helper.make_tensor("value", TensorProto.INT32, [1], [7])
    check("ConstantOfShape", {"shape": i64(2, 0, 3)}, value=value)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_space_round_trip_with_a_dynamic_batch(mode):
    r = rng()
    x = randn(r, 2, 8, 3, 5)
    y = check("DepthToSpace", {"x": x}, shapes={"x": ["n", 8, 3, 5]}, blocksize=2, mode=mode)["y0"]
    check("SpaceToDepth", {"x": y}, shapes={"x": ["n", 2, 6, 10]}, blocksize=2, mode=mode, opset=22)


def test_center_crop_pad_crops_and_pads():
    r = rng()
    check("CenterCropPad", {"x": randn(r, 9, 4, 3), "shape": i64(6, 7)}, axes=[0, -2])
    check("CenterCropPad", {"x": randn(r, 5, 6, 2), "shape": i64(8, 3, 2)})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_with_runtime_axes_and_negative_pads(mode):
    r = rng()
    x = randn(r, 4, 5, 6)
    feeds = {"x": x, "pads": i64(2, -1, 1, 2), "value": np.asarray(1.25, np.float32), "axes": i64(-1, 0)}
    check("Pad", feeds, mode=mode, reference="ort")  # np.pad (the reference evaluator) refuses negative pads


def test_trilu_eye_like():
    r = rng()
    x = r.integers(1, 9, (2, 4, 5)).astype(np.int64)
    for upper in (0, 1):
        for k in (-2, 0, 3):
            check("Trilu", {"x": x, "k": np.asarray(k, np.int64)}, upper=upper)
    check("EyeLike", {"x": x[0]}, k=-1, dtype=TensorProto.FLOAT)


def test_bitcast_and_col2im():
    r = rng()
    check("BitCast", {"x": randn(r, 2, 3)}, opset=26, to=TensorProto.INT32)
    cols = randn(r, 2, 2 * 2 * 3, 15)  # 3 x 5 blocks
    check("Col2Im", {"x": cols, "image_shape": i64(5, 6), "block_shape": i64(2, 3)},
          strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 1])


# ----------------------------------------------------------------------------- indexing
@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements_and_nd(reduction):
    r = rng()
    data = randn(r, 4, 5)
    idx = r.integers(-4, 4, (3, 5)).astype(np.int64)
    if reduction == "none":  # unique targets per column so the result is defined
        idx = np.stack([r.permutation(5)[:3] for _ in range(5)], 1).astype(np.int64) - 4
        idx = np.where(idx < -4, idx + 4, idx)
    check("ScatterElements", {"data": data, "indices": idx, "updates": randn(r, 3, 5)}, axis=0,
          reduction=reduction)
    nd_idx = i64([0], [-1], [2]) if reduction == "none" else i64([0], [-1], [0])
    check("ScatterND", {"data": data, "indices": nd_idx, "updates": randn(r, 3, 5)}, reduction=reduction)


@pytest.mark.parametrize("mode", ["linear", "circular"])
def test_tensor_scatter(mode):
    r = rng()
    check("TensorScatter", {"cache": randn(r, 2, 3, 6, 4), "update": randn(r, 2, 3, 3, 4),
                            "write_indices": i64(1, 5 if mode == "circular" else 3)}, opset=24, mode=mode)


def test_gather_elements_and_nd_with_batch_dims():
    r = rng()
    data = randn(r, 3, 4, 5)
    check("GatherElements", {"data": data, "indices": r.integers(-4, 4, (3, 2, 5)).astype(np.int64)}, axis=1)
    check("GatherND", {"data": data, "indices": r.integers(-4, 4, (3, 2, 1)).astype(np.int64)}, batch_dims=1)


def test_one_hot_with_runtime_depth_negative_indices_and_axis():
    r = rng()
    idx = r.integers(-6, 7, (2, 3)).astype(np.int64)
    check("OneHot", {"indices": idx, "depth": np.float32(5), "values": np.asarray([-1.0, 2.0], np.float32)}, axis=1)


def test_reverse_sequence():
    r = rng()
    check("ReverseSequence", {"x": randn(r, 5, 3, 2), "lens": i64(5, 1, 3)}, batch_axis=1, time_axis=0)


# ----------------------------------------------------------------------------- data-dependent shapes
def test_non_zero_output_is_sized_at_run_time_and_feeds_other_layers():
    r = rng()
    x = np.where(r.random((3, 4)) > 0.5, randn(r, 3, 4), 0).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Transpose", ["nz"], ["y0"])], "nz",
        [helper.make_tensor_value_info("x", F, [3, 4])], [helper.make_tensor_value_info("y0", I64, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    engine = kilnrt.build(m)
    out = engine._io("y0")
    assert out.dtype.name == "INT64" and -1 in out.shape
    np.testing.assert_array_equal(engine.run({"x": x})["y0"], np.stack(np.nonzero(x), 1))


@pytest.mark.parametrize("attrs", [{}, {"sorted": 0}, {"axis": 1}, {"axis": -1, "sorted": 1}])
def test_unique_all_four_outputs(attrs):
    r = rng()
    x = r.integers(0, 3, (3, 4) if "axis" in attrs else (9,)).astype(np.float32)
    check("Unique", {"x": x}, n_out=4, opset=11, **attrs)


def test_compress():
    r = rng()
    x = randn(r, 4, 3)
    check("Compress", {"x": x, "c": np.asarray([True, False, True])}, axis=1)
    check("Compress", {"x": x, "c": np.asarray([False, True, True, False, True])})


def test_shape_start_end_and_size():
    r = rng()
    x = randn(r, 2, 3, 4, 5)
    check("Shape", {"x": x}, opset=15, start=1, end=-1)
    check("Size", {"x": x})


def test_sequence_ops_are_reported_unsupported():
    g = helper.make_graph([helper.make_node("SequenceConstruct", ["x"], ["s"], name="seq"),
                           helper.make_node("SequenceAt", ["s", "i"], ["y"], name="at")], "seq",
                          [helper.make_tensor_value_info("x", F, [2]), helper.make_tensor_value_info("i", I64, [])],
                          [helper.make_tensor_value_info("y", F, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ImportErrors) as info:
        kilnrt.build(m)
    text = str(info.value)
    assert "op SequenceConstruct is not supported" in text and "op SequenceAt is not supported" in text
    assert "sequence and optional values are not supported" in text


# ----------------------------------------------------------------------------- control flow
def _graph_model(nodes, inputs, outputs, opset=18) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "cf", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _compare(m: onnx.ModelProto, feeds: dict[str, np.ndarray], round_trip: bool = False,
             reference: str = "onnx") -> None:
    if reference == "ort":
        import onnxruntime

        sess = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, feeds)
    else:
        expected = ReferenceEvaluator(m).run(None, feeds)
    engine = kilnrt.build(m)
    if round_trip:  # bodies travel inside the plan as data
        engine = kilnrt.engine.Engine.deserialize(engine.serialize())
    got = engine.run(feeds)
    for out, want in zip(m.graph.output, expected):
        assert got[out.name].shape == want.shape
        np.testing.assert_allclose(got[out.name], want, rtol=1e-5, atol=1e-6)


def test_if_runs_only_the_chosen_branch_and_captures_outer_values():
    r = rng()
    x = randn(r, 3, 4)
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", F, [3, 4])])
    else_g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", F, None)])
    m = _graph_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                     [helper.make_tensor_value_info("x", F, [3, 4]), helper.make_tensor_value_info("c", BOOL, []),
                      helper.make_tensor_value_info("s", I64, [2])],
                     [helper.make_tensor_value_info("y", F, None)])
    # the else branch's reshape to [5, 5] would fail: it must not run when c is true
    _compare(m, {"x": x, "c": np.asarray(True), "s": i64(5, 5)}, round_trip=True)
    _compare(m, {"x": x, "c": np.asarray(False), "s": i64(4, 3)})


def test_loop_with_trip_count_condition_carried_and_scan_outputs():
    r = rng()
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "x"], ["acc_out"]),
         helper.make_node("ReduceSum", ["acc_out"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["cond_out"]),
         helper.make_node("Cast", ["i"], ["i_f"], to=F),
         helper.make_node("Mul", ["acc_out", "i_f"], ["scan"])], "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
         helper.make_tensor_value_info("acc_in", F, [3])],
        [helper.make_tensor_value_info("cond_out", BOOL, []), helper.make_tensor_value_info("acc_out", F, [3]),
         helper.make_tensor_value_info("scan", F, [3])])
    m = _graph_model([helper.make_node("Loop", ["n", "c", "acc0"], ["acc", "scans"], body=body)],
                     [helper.make_tensor_value_info("n", I64, []), helper.make_tensor_value_info("c", BOOL, []),
                      helper.make_tensor_value_info("acc0", F, [3]), helper.make_tensor_value_info("x", F, [3]),
                      helper.make_tensor_value_info("limit", F, [])],
                     [helper.make_tensor_value_info("acc", F, [3]), helper.make_tensor_value_info("scans", F, None)])
    x = np.abs(randn(r, 3)) + 0.5
    for n, limit in ((6, 1e9), (50, 12.0)):   # stops on the trip count, then on the condition
        _compare(m, {"n": np.asarray(n, np.int64), "c": np.asarray(True), "acc0": randn(r, 3), "x": x,
                     "limit": np.asarray(limit, np.float32)}, round_trip=n == 6)


def test_scan_with_reverse_input_and_output_axes():
    r = rng()
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["s_out"]), helper.make_node("Mul", ["s_out", "row"], ["y"])],
        "body", [helper.make_tensor_value_info("s_in", F, [4]), helper.make_tensor_value_info("row", F, [4])],
        [helper.make_tensor_value_info("s_out", F, [4]), helper.make_tensor_value_info("y", F, [4])])
    m = _graph_model([helper.make_node("Scan", ["s0", "xs"], ["s", "ys"], body=body, num_scan_inputs=1,
                                       scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1],
                                       scan_output_directions=[1])],
                     [helper.make_tensor_value_info("s0", F, [4]), helper.make_tensor_value_info("xs", F, [4, 5])],
                     [helper.make_tensor_value_info("s", F, [4]), helper.make_tensor_value_info("ys", F, [4, 5])])
    # the reference evaluator has no reverse directions: onnxruntime checks this one
    _compare(m, {"s0": randn(r, 4), "xs": randn(r, 4, 5)}, round_trip=True, reference="ort")
