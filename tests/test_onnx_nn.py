"""Neural-network, vision and attention ops: one tiny ONNX model per case, run through kilnrt
and compared with onnx's ReferenceEvaluator (or onnxruntime where the reference lacks a
feature, e.g. RNN sequence_lens) on fresh seeded inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import kilnrt
from kilnrt.errors import ErrorCode, ImportErrors, UnsupportedNodeError
from kilnrt.testing import assert_close
from onnx_cases import one_node_model as model, randn, rng


@pytest.fixture
def r() -> np.random.Generator:
    return rng()


def check(op: str, feeds: dict[str, np.ndarray], outputs=1, opset: int = 22, reference: str = "onnx",
          rtol: float | None = None, atol: float | None = None, **attrs) -> None:
    m = model(op, feeds, outputs, opset, **attrs)
    real = {k: v for k, v in feeds.items() if k.strip()}
    if reference == "ort":
        import onnxruntime

        sess = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        expected = sess.run(None, real)
    else:
        expected = ReferenceEvaluator(m).run(None, real)
    got = kilnrt.build(m).run(real)
    names = [o.name for o in m.graph.output]
    for name, want in zip(names, expected):
        want = np.asarray(want)
        have = np.asarray(got[name])
        assert have.dtype == want.dtype and have.shape == want.shape, (name, have.dtype, have.shape, want.shape)
        assert_close(have, want, rtol, atol, name=f"{op}.{name}")


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_gqa_past_bool_mask(r, causal):
    q, k, v = randn(r, 2, 6, 3, 8), randn(r, 2, 2, 4, 8), randn(r, 2, 2, 4, 5)
    past_k, past_v = randn(r, 2, 2, 5, 8), randn(r, 2, 2, 5, 5)
    mask = r.random((3, 9)) > 0.3
    check("Attention", {"q": q, "k": k, "v": v, "m": mask, "pk": past_k, "pv": past_v}, 4, opset=23,
          is_causal=causal, scale=0.3)


def test_attention_3d_softcap_scores_with_bias(r):
    q, k, v = randn(r, 2, 4, 24), randn(r, 2, 6, 24), randn(r, 2, 6, 12)
    mask = randn(r, 4, 6)
    check("Attention", {"q": q, "k": k, "v": v, "m": mask}, ["y", "", "", "qk"], opset=23, q_num_heads=3,
          kv_num_heads=3, softcap=2.0, qk_matmul_output_mode=2)


def test_attention_nonpad_kv_seqlen_causal(r):
    q, k, v = randn(r, 3, 2, 2, 8), randn(r, 3, 2, 6, 8), randn(r, 3, 2, 6, 8)
    lens = np.array([6, 4, 2], np.int64)
    check("Attention", {"q": q, "k": k, "v": v, "": None, " ": None, "  ": None, "n": lens}, 1, opset=24,
          is_causal=1)


def test_attention_sliding_window_probabilities(r):
    q, k, v = randn(r, 1, 2, 5, 4), randn(r, 1, 2, 7, 4), randn(r, 1, 2, 7, 4)
    check("Attention", {"q": q, "k": k, "v": v}, ["y", "", "", "p"], opset=25, left_window_size=2,
          right_window_size=1, qk_matmul_output_mode=3)


def test_attention_fp16_matches_reference_precision(r):
    q, k, v = (randn(r, 1, 2, 4, 8, dtype=np.float16) for _ in range(3))
    check("Attention", {"q": q, "k": k, "v": v}, 1, opset=23, is_causal=1, rtol=2e-3, atol=1e-3)


def _flex_model(feeds: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    node = helper.make_node("FlexAttention", list(feeds), ["y"], domain="ai.onnx.preview", **attrs)
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for n, v in feeds.items()]
    graph = helper.make_graph([node], "flex", ins, [helper.make_empty_tensor_value_info("y")])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 26),
                                                                  helper.make_opsetid("ai.onnx.preview", 1)])


@pytest.mark.parametrize("with_mods", [False, True])
def test_flex_attention_gqa(r, with_mods):
    feeds = {"q": randn(r, 1, 4, 3, 8), "k": randn(r, 1, 2, 5, 8), "v": randn(r, 1, 2, 5, 6)}
    attrs = {"scale": 0.4}
    if with_mods:   # score_mod: scores + (q_idx - k_idx) as a relative position bias; prob_mod: probs * 2
        f = TensorProto.FLOAT
        sm = helper.make_graph(
            [helper.make_node("Shape", ["s"], ["shape"]),
             helper.make_node("Gather", ["shape", "i2"], ["L"], axis=0),
             helper.make_node("Gather", ["shape", "i3"], ["S"], axis=0),
             helper.make_node("Range", ["zero", "L", "one"], ["qr"]),
             helper.make_node("Range", ["zero", "S", "one"], ["kr"]),
             helper.make_node("Unsqueeze", ["qr", "ax"], ["qi"]),
             helper.make_node("Sub", ["qi", "kr"], ["rel"]),
             helper.make_node("Cast", ["rel"], ["relf"], to=f),
             helper.make_node("Add", ["s", "relf"], ["out"])], "score_mod",
            [helper.make_tensor_value_info("s", f, None)], [helper.make_tensor_value_info("out", f, None)],
            [helper.make_tensor(n, TensorProto.INT64, [], [v]) for n, v in
             (("i2", 2), ("i3", 3), ("zero", 0), ("one", 1))]
            + [helper.make_tensor("ax", TensorProto.INT64, [1], [1])])
        pm = helper.make_graph([helper.make_node("Mul", ["p", "two"], ["out"])], "prob_mod",
                               [helper.make_tensor_value_info("p", f, None)],
                               [helper.make_tensor_value_info("out", f, None)],
                               [helper.make_tensor("two", f, [], [2.0])])
        attrs.update(score_mod=sm, prob_mod=pm)
    m = _flex_model(feeds, **attrs)
    assert_close(kilnrt.build(m).run(feeds)["y"], ReferenceEvaluator(m).run(None, feeds)[0])


@pytest.mark.parametrize("interleaved,dim", [(0, 0), (1, 4), (0, 4), (1, 0)])
def test_rotary_embedding(r, interleaved, dim):
    x = randn(r, 2, 3, 4, 8)
    half = (dim or 8) // 2
    cos, sin = randn(r, 10, half), randn(r, 10, half)
    pos = r.integers(0, 10, (2, 4)).astype(np.int64)
    check("RotaryEmbedding", {"x": x, "c": cos, "s": sin, "p": pos}, 1, opset=23, interleaved=interleaved,
          rotary_embedding_dim=dim)


def test_rotary_embedding_3d_without_position_ids(r):
    x = randn(r, 2, 4, 24)
    check("RotaryEmbedding", {"x": x, "c": randn(r, 2, 4, 2), "s": randn(r, 2, 4, 2)}, 1, opset=23,
          num_heads=3, rotary_embedding_dim=4)


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
def test_linear_attention(r, rule):
    q, k, v = randn(r, 2, 3, 16), randn(r, 2, 3, 8), randn(r, 2, 3, 8)
    feeds = {"q": q, "k": k, "v": v, "s": randn(r, 2, 2, 4, 4)}
    feeds["d"] = -np.abs(randn(r, 2, 3, 2)) if rule in ("gated", "gated_delta") else None
    feeds["b"] = np.abs(randn(r, 2, 3, 2)) if rule in ("delta", "gated_delta") else None
    feeds = {(n if a is not None else " " * i): a for i, (n, a) in enumerate(feeds.items())}
    check("LinearAttention", feeds, 2, opset=27, q_num_heads=4, kv_num_heads=2, update_rule=rule)


# ----------------------------------------------------------------------------- normalization
@pytest.mark.parametrize("axis", [1, -1])
def test_layer_normalization_with_statistics(r, axis):
    x = randn(r, 2, 3, 4)
    shape = x.shape[axis:] if axis > 0 else x.shape[-1:]
    check("LayerNormalization", {"x": x, "s": randn(r, *shape), "b": randn(r, *shape)}, 3, opset=17,
          axis=axis, epsilon=1e-3)


def test_rms_normalization(r):
    x = randn(r, 2, 3, 5)
    check("RMSNormalization", {"x": x, "s": randn(r, 3, 5)}, 1, opset=23, axis=1, epsilon=0.1)


@pytest.mark.parametrize("groups", [3, 1, 6])   # one group: over C and the spatial dims, not InstanceNorm
def test_group_normalization(r, groups):
    x = randn(r, 2, 6, 3, 3)
    check("GroupNormalization", {"x": x, "s": randn(r, 6), "b": randn(r, 6)}, 1, opset=21, num_groups=groups)


def test_batch_normalization_training_mode(r):
    x = randn(r, 2, 3, 4)
    check("BatchNormalization", {"x": x, "s": randn(r, 3), "b": randn(r, 3), "m": randn(r, 3),
                                 "v": np.abs(randn(r, 3))}, 3, opset=15, training_mode=1, momentum=0.8)


# ----------------------------------------------------------------------------- vision
RESIZE_CASES = [
    dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="ceil"),
    dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil"),
    dict(mode="linear", coordinate_transformation_mode="align_corners"),
    dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
    dict(mode="linear", antialias=1),
    dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
    dict(mode="cubic", coordinate_transformation_mode="pytorch_half_pixel", antialias=1),
]


@pytest.mark.parametrize("attrs", RESIZE_CASES)
@pytest.mark.parametrize("scales", [[1.0, 1.0, 0.6, 1.7], [1.0, 1.0, 2.0, 0.5]])
def test_resize_scales(r, attrs, scales):
    x = randn(r, 1, 2, 5, 6)
    check("Resize", {"x": x, "": None, "s": np.array(scales, np.float32)}, 1, opset=19, **attrs)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_resize_sizes_axes_policy(r, policy):
    x = randn(r, 1, 2, 4, 6)
    check("Resize", {"x": x, "": None, " ": None, "z": np.array([7, 3], np.int64)}, 1, opset=19,
          axes=[3, 2], mode="linear", keep_aspect_ratio_policy=policy)


def test_resize_tf_crop_and_resize_extrapolation(r):
    x = randn(r, 1, 1, 5, 5)
    roi = np.array([0.1, -0.2, 0.9, 1.3], np.float32)
    check("Resize", {"x": x, "roi": roi, "": None, "z": np.array([4, 6], np.int64)}, 1, opset=19, axes=[2, 3],
          mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.0)


def test_resize_integer_nearest(r):
    x = r.integers(0, 255, (1, 1, 3, 4)).astype(np.uint8)
    check("Resize", {"x": x, "": None, "s": np.array([1, 1, 2.5, 1.5], np.float32)}, 1, opset=19)


def _resize_to(x: np.ndarray, sizes: list[int], mode: str) -> onnx.ModelProto:
    """A Resize to constant ``sizes`` (an initializer, as exporters write it)."""
    sizes = np.array(sizes, np.int64)
    m = model("Resize", {"x": x, "": None, " ": None, "z": sizes}, 1, 19, mode=mode)
    m.graph.initializer.append(onnx.numpy_helper.from_array(sizes, "z"))
    del m.graph.input[1]
    return m


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_repeat_run_copies_nothing_from_the_host(r, monkeypatch, mode):
    """The taps of an axis are made on the device once: a later run builds no tensor from a
    host array, so a CUDA graph can capture it (a capture refuses pageable host copies)."""
    m = _resize_to(randn(r, 1, 2, 4, 6), [1, 2, 8, 9], mode)
    engine = kilnrt.build(m)
    x = randn(r, 1, 2, 4, 6)
    first = engine.run({"x": x})["y0"]
    made = []
    real = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: made.append(a.shape) or real(a))
    x2 = randn(r, 1, 2, 4, 6)
    second = engine.run({"x": x2})["y0"]
    monkeypatch.undo()
    assert not [s for s in made if s != x2.shape], f"host arrays turned into tensors on a repeat run: {made}"
    assert_close(second, ReferenceEvaluator(m).run(None, {"x": x2})[0], name="Resize")
    assert_close(first, ReferenceEvaluator(m).run(None, {"x": x})[0], name="Resize")


def test_resize_taps_are_never_evicted():
    """A captured graph reads the taps by address, so none may be freed while the process lives."""
    from kilnrt.kernels.cpu.vision import _device_taps
    from kilnrt.network.layers import ResizeParams

    p = ResizeParams(mode="linear")
    first = _device_taps(p, 5, 9, 1.8, None, torch.device("cpu"))
    for out_w in range(10, 1200):
        _device_taps(p, 5, out_w, out_w / 5, None, torch.device("cpu"))
    assert _device_taps(p, 5, 9, 1.8, None, torch.device("cpu"))[0] is first[0]


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_engine_is_captured_into_one_cuda_graph(r, mode):
    m = _resize_to(randn(r, 1, 3, 5, 7), [1, 3, 10, 9], mode)
    engine = kilnrt.build(m, device="cuda", tf32=False)
    ctx = engine.create_execution_context()
    for _ in range(3):
        x = randn(r, 1, 3, 5, 7)
        got = ctx.run({"x": torch.from_numpy(x).cuda()})["y0"].cpu().numpy()
        assert_close(got, ReferenceEvaluator(m).run(None, {"x": x})[0], name="Resize")
    stats = ctx.graph_stats
    assert stats.captures == 1 and stats.eager_runs == 0, stats.fallback_reason


def test_upsample_nearest(r):
    check("Upsample", {"x": randn(r, 1, 2, 2, 3), "s": np.array([1, 1, 2, 3], np.float32)}, 1, opset=9)


@pytest.mark.parametrize("mode,padding", [("linear", "zeros"), ("nearest", "border"), ("cubic", "reflection"),
                                          ("linear", "reflection")])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_2d(r, mode, padding, align):
    x, grid = randn(r, 1, 2, 5, 4), r.uniform(-1.3, 1.3, (1, 4, 3, 2)).astype(np.float32)
    check("GridSample", {"x": x, "g": grid}, 1, opset=22, mode=mode, padding_mode=padding, align_corners=align)


def test_grid_sample_3d(r):
    x, grid = randn(r, 1, 2, 3, 4, 5), r.uniform(-1.1, 1.1, (1, 2, 3, 4, 3)).astype(np.float32)
    check("GridSample", {"x": x, "g": grid}, 1, opset=22, mode="linear", padding_mode="border")


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 3, 3, 4, 5]])
def test_affine_grid(r, align, size):
    theta = randn(r, 2, len(size) - 2, len(size) - 1)
    check("AffineGrid", {"t": theta, "s": np.array(size, np.int64)}, 1, opset=20, align_corners=align)


@pytest.mark.parametrize("center", [0, 1])
def test_non_max_suppression(r, center):
    xy = r.uniform(0, 10, (2, 12, 2)).astype(np.float32)
    wh = r.uniform(1, 5, (2, 12, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], -1) if not center else np.concatenate([xy, wh], -1)
    scores = r.random((2, 3, 12)).astype(np.float32)
    check("NonMaxSuppression", {"b": boxes, "s": scores, "m": np.array([4], np.int64),
                                "i": np.array([0.3], np.float32), "t": np.array([0.2], np.float32)},
          1, opset=11, center_point_box=center)


@pytest.mark.parametrize("mode,half", [("avg", "half_pixel"), ("max", "output_half_pixel")])
@pytest.mark.parametrize("ratio", [0, 2])
def test_roi_align(r, mode, half, ratio):
    x = randn(r, 2, 3, 8, 8)
    rois = np.array([[0.5, 1, 6, 7.5], [2, 2, 3, 4], [-1, 0, 9, 9]], np.float32)
    check("RoiAlign", {"x": x, "r": rois, "b": np.array([0, 1, 1], np.int64)}, 1, opset=16, mode=mode,
          coordinate_transformation_mode=half, output_height=3, output_width=2, sampling_ratio=ratio,
          spatial_scale=0.9)


# ----------------------------------------------------------------------------- convolution and pooling
@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 3], pads=[1, 0, 2, 1], output_padding=[1, 2], dilations=[2, 1]),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[3, 2], output_shape=[10, 8]),
    dict(strides=[1, 2], group=2, pads=[1, 1, 1, 1]),
])
def test_conv_transpose_2d(r, attrs):
    x, w = randn(r, 1, 4, 3, 4), randn(r, 4, 3, 3, 3)
    check("ConvTranspose", {"x": x, "w": w, "b": randn(r, 3 * attrs.get("group", 1))}, 1, reference="ort", **attrs)


@pytest.mark.parametrize("shape", [(1, 2, 5), (1, 2, 3, 3, 4)])
def test_conv_transpose_1d_3d(r, shape):
    n = len(shape) - 2
    x, w = randn(r, *shape), randn(r, 2, 3, *([2] * n))
    check("ConvTranspose", {"x": x, "w": w}, 1, reference="ort", strides=[2] * n)


def test_max_pool_with_indices(r):
    x = randn(r, 2, 3, 5, 6)
    check("MaxPool", {"x": x}, 2, reference="ort", kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])


def test_max_pool_indices_column_major(r):
    check("MaxPool", {"x": randn(r, 1, 2, 4, 4)}, 2, kernel_shape=[2, 2], strides=[2, 2], storage_order=1)


def test_max_unpool_roundtrip(r):
    x = randn(r, 1, 2, 4, 4)
    pooled = model("MaxPool", {"x": x}, 2, 22, kernel_shape=[2, 2], strides=[2, 2])
    vals, idx = ReferenceEvaluator(pooled).run(None, {"x": x})
    check("MaxUnpool", {"v": vals, "i": idx, "s": np.array([1, 2, 5, 5], np.int64)}, 1, kernel_shape=[2, 2],
          strides=[2, 2])


def test_deform_conv(r):
    x, w = randn(r, 1, 4, 5, 5), randn(r, 2, 2, 2, 2)
    offset = randn(r, 1, 2 * 2 * 2 * 2, 4, 4) * 0.7
    mask = r.random((1, 2 * 4, 4, 4)).astype(np.float32)
    check("DeformConv", {"x": x, "w": w, "o": offset, "b": randn(r, 2), "m": mask}, 1, group=2, offset_group=2,
          kernel_shape=[2, 2])


@pytest.mark.parametrize("past,act", [(False, "none"), (True, "silu")])
def test_causal_conv_with_state(r, past, act):
    feeds = {"x": randn(r, 2, 3, 6), "w": randn(r, 3, 1, 3), "b": randn(r, 3)}
    if past:
        feeds["s"] = randn(r, 2, 3, 2)
    check("CausalConvWithState", feeds, 2, opset=27, activation=act)


# ----------------------------------------------------------------------------- recurrent
@pytest.mark.parametrize("op,gates", [("RNN", 1), ("GRU", 3), ("LSTM", 4)])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_with_sequence_lens(r, op, gates, direction):
    d, h, seq, batch, inp = (2 if direction == "bidirectional" else 1), 4, 5, 3, 3
    feeds = {"x": randn(r, seq, batch, inp), "w": randn(r, d, gates * h, inp) * 0.5,
             "r": randn(r, d, gates * h, h) * 0.5, "b": randn(r, d, 2 * gates * h),
             "l": np.array([5, 2, 4], np.int32), "h0": randn(r, d, batch, h)}
    outs = 2
    if op == "LSTM":
        feeds.update(c0=randn(r, d, batch, h), p=randn(r, d, 3 * h))
        outs = 3
    extra = {"linear_before_reset": 1} if op == "GRU" else {}
    check(op, feeds, outs, reference="ort", direction=direction, hidden_size=h, **extra)


def test_lstm_activations_and_clip(r):
    feeds = {"x": randn(r, 4, 2, 3), "w": randn(r, 1, 8, 3), "r": randn(r, 1, 8, 2)}
    check("LSTM", feeds, 3, reference="ort", hidden_size=2, clip=0.7,
          activations=["HardSigmoid", "Tanh", "Softsign"], activation_alpha=[0.3], activation_beta=[0.4])


@pytest.mark.parametrize("op,gates", [("GRU", 3), ("LSTM", 4)])
def test_recurrent_batch_first(r, op, gates):
    feeds = {"x": randn(r, 2, 4, 3), "w": randn(r, 2, gates * 5, 3), "r": randn(r, 2, gates * 5, 5)}
    check(op, feeds, 2, hidden_size=5, layout=1, direction="bidirectional")


# ----------------------------------------------------------------------------- small ops and errors
def test_swiglu(r):
    check("SwiGLU", {"a": randn(r, 2, 5), "b": randn(r, 2, 5)}, 1, opset=28, alpha=0.7)


def test_dropout_mask_at_inference(r):
    check("Dropout", {"x": randn(r, 3, 4), "ratio": np.array(0.3, np.float32)}, 2, opset=22)


def test_attention_plan_round_trip(r):
    q, k, v = randn(r, 1, 2, 3, 4), randn(r, 1, 2, 3, 4), randn(r, 1, 2, 3, 4)
    m = model("Attention", {"q": q, "k": k, "v": v}, 1, 23, is_causal=1)
    engine = kilnrt.build(m)
    again = kilnrt.load(engine.serialize())
    feeds = {"q": q, "k": k, "v": v}
    assert_close(again.run(feeds)["y0"], engine.run(feeds)["y0"], 0, 0)


def test_plugin_layers_round_trip(r):
    x, w = randn(r, 1, 2, 4, 4), randn(r, 2, 2, 2, 2)
    m = model("DeformConv", {"x": x, "w": w, "o": randn(r, 1, 8, 3, 3)}, 1, 22, kernel_shape=[2, 2])
    feeds = {"x": x, "w": w, "o": randn(r, 1, 8, 3, 3)}
    engine = kilnrt.build(m)
    assert_close(kilnrt.load(engine.serialize()).run(feeds)["y0"], engine.run(feeds)["y0"], 0, 0)


def _import_error(m: onnx.ModelProto) -> UnsupportedNodeError:
    with pytest.raises((UnsupportedNodeError, ImportErrors)) as info:
        kilnrt.build(m)
    err = info.value
    return err.errors[0] if isinstance(err, ImportErrors) else err


def test_unsupported_resize_mode_names_what_is_supported(r):
    m = model("Resize", {"x": randn(r, 1, 1, 2, 2), "": None, "s": np.ones(4, np.float32)}, 1, 19, mode="area")
    err = _import_error(m)
    assert err.code == ErrorCode.UNSUPPORTED_NODE_ATTR
    assert "mode='area'" in str(err) and "nearest, linear, cubic" in str(err)


def test_attention_rejects_mismatched_past(r):
    q = randn(r, 1, 2, 3, 4)
    m = model("Attention", {"q": q, "k": q, "v": q, "": None, "pk": randn(r, 1, 2, 2, 4)}, 1, 23)
    err = _import_error(m)
    assert err.code == ErrorCode.INVALID_NODE and "past_key and past_value" in str(err)
