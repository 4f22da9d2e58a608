"""Einsums that are batched matrix products become matmuls (``lower_einsum``), and attention
over tensors of any rank from 3 fuses (``fuse_attention``): each rewrite fires where it
should, a near miss stays as it was, and the outputs match ``torch.einsum`` in float64 or
ONNX Runtime on fresh random inputs."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import kilnrt
from kilnrt.network.graph import Network
from kilnrt.network.layers import LayerKind
from kilnrt.optimize.passes.einsum import lower_einsum, parse_equation
from kilnrt.testing import fresh_seed, run_reference

LETTERS = "abcdefghij"


def _einsum_network(equation: str, shapes: list[tuple[int, ...]], dtype=np.float64) -> Network:
    net = Network("einsum")
    ins = [net.add_input(f"x{i}", dtype, s) for i, s in enumerate(shapes)]
    net.mark_output(net.add_einsum(ins, equation).get_output(0))
    return net


def _run(net: Network, feeds: dict[str, np.ndarray]) -> np.ndarray:
    out = run_reference(net, {k: torch.from_numpy(v) for k, v in feeds.items()})
    return out[net.outputs[0].name].numpy()


def _lowered_matches_torch(equation: str, shapes, *, lowered: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    feeds = {f"x{i}": rng.standard_normal(s) for i, s in enumerate(shapes)}
    net = _einsum_network(equation, shapes)
    stats: dict = {}
    out_net = lower_einsum(net, stats)
    kinds = [l.kind for l in out_net.layers]
    assert (LayerKind.EINSUM not in kinds) == lowered, (equation, kinds)
    assert (kinds.count(LayerKind.MATRIX_MULTIPLY) == 1) == lowered
    assert stats.get("lower_einsum", 0) == int(lowered)
    expected = torch.einsum(equation, *[torch.from_numpy(feeds[f"x{i}"]) for i in range(len(shapes))]).numpy()
    got = _run(out_net, feeds)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@st.composite
def matrix_products(draw):
    """A random two-operand equation that is a batched matrix product: 0-3 batch indices, one
    contracted index, 1-3 free indices on one operand and one on the other (either way
    round), each term's letters in a random order."""
    n_batch, n_free = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    letters = draw(st.permutations(LETTERS))[:n_batch + n_free + 2]
    batch, m, (k, n) = letters[:n_batch], letters[n_batch:n_batch + n_free], letters[n_batch + n_free:]
    if draw(st.booleans()):
        m, n = [n], m   # the several free indices on B's side
    else:
        n = [n]
    size = {c: draw(st.integers(1, 4)) for c in letters}
    a = draw(st.permutations(batch + m + [k]))
    b = draw(st.permutations(batch + [k] + n))
    out = draw(st.permutations(batch + m + n))
    equation = f"{''.join(a)},{''.join(b)}->{''.join(out)}"
    return equation, [tuple(size[c] for c in a), tuple(size[c] for c in b)]


@settings(max_examples=60, deadline=None)
@given(case=matrix_products(), seed=st.integers(0, 2**31 - 1))
def test_every_batched_matrix_product_becomes_one_matmul(case, seed):
    equation, shapes = case
    _lowered_matches_torch(equation, shapes, lowered=True, seed=seed)


@pytest.mark.parametrize("equation,shapes", [
    ("bghid,bghjd->bghij", [(2, 3, 2, 5, 4), (2, 3, 2, 6, 4)]),   # MaxViT's scores: k read transposed
    ("bghij,bghjd->bghid", [(2, 3, 2, 5, 6), (2, 3, 2, 6, 4)]),   # its weighted values: a plain product
    ("ij,jk", [(3, 4), (4, 5)]),                                  # implicit output
    ("...ij,...jk->...ik", [(2, 3, 3, 4), (2, 3, 4, 5)]),         # ellipsis
    ("bij,bjk->bki", [(2, 3, 4), (2, 4, 5)]),                     # output transposed after
    ("jbi,bkj->kbi", [(4, 2, 3), (2, 5, 4)]),                     # batch in the middle
    ("bij,bjk->bik", [(1, 3, 4), (2, 4, 5)]),                     # a broadcast batch
    ("bnd,de->bne", [(2, 3, 4), (4, 5)]),                         # a linear layer, einops style
    ("bijk,bkl->bijl", [(2, 3, 4, 5), (2, 5, 6)]),                # two free indices on A's side
    ("bkl,bijk->bilj", [(2, 5, 6), (2, 3, 4, 5)]),                # ... on B's: the operands swap
])
def test_named_products_lower(equation, shapes):
    _lowered_matches_torch(equation, shapes, lowered=True, seed=fresh_seed())


@pytest.mark.parametrize("equation,shapes", [
    ("bij,bjk->bk", [(2, 3, 4), (2, 4, 5)]),      # i summed over one operand alone
    ("bij,bkl->bijkl", [(2, 3, 4), (2, 5, 6)]),   # an outer product: nothing contracted
    ("bij,bjk,bkl->bil", [(2, 3, 4), (2, 4, 5), (2, 5, 6)]),  # three operands
    ("bii,bij->bij", [(2, 3, 3), (2, 3, 4)]),     # a diagonal
    ("bijk,bklm->bijlm", [(2, 3, 4, 5), (2, 5, 6, 2)]),  # two free indices on each side
    ("bij,bj->bi", [(2, 3, 4), (2, 4)]),          # a matrix-vector product
    ("bijk,bjkl->bil", [(2, 3, 4, 5), (2, 4, 5, 6)]),   # two contracted indices
    ("bij,bjl->bil", [(2, 3, 4), (2, 4, 5)]),     # lowered (control for the one below)
])
def test_near_misses_stay_einsums(equation, shapes):
    lowered = equation == "bij,bjl->bil"
    _lowered_matches_torch(equation, shapes, lowered=lowered, seed=fresh_seed())


def test_integer_einsums_stay():
    net = _einsum_network("ij,jk->ik", [(2, 3), (3, 4)], dtype=np.int32)
    assert [l.kind for l in lower_einsum(net).layers] == [LayerKind.EINSUM]


def test_parse_equation_expands_the_ellipsis_and_the_implicit_output():
    terms, out = parse_equation("...ij,...jk", [4, 4])
    assert len(terms[0]) == 4 and terms[0][2:] == "ij" and terms[0][:2] == terms[1][:2]
    assert out == terms[0][:2] + "ik"
    assert parse_equation("...ij,...jk->...ik", [4, 3]) is None  # ellipses of different widths


# ------------------------------------------------------------------------ attention of any rank
def _window_attention_model(q_shape, mask_shape, k_scale: float = 0.5) -> bytes:
    """MaxViT's attention as torchvision writes it: k scaled, two einsums, a relative
    position bias added to the scores."""
    *lead, h, i, d = q_shape
    letters = "bgc"[:len(lead)]
    rng = np.random.default_rng(fresh_seed())
    bias = rng.standard_normal(mask_shape).astype(np.float32)
    nodes = [helper.make_node("Mul", ["k", "s"], ["ks"]),
             helper.make_node("Einsum", ["q", "ks"], ["sc"], equation=f"{letters}hid,{letters}hjd->{letters}hij"),
             helper.make_node("Add", ["sc", "bias"], ["sb"]),
             helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
             helper.make_node("Einsum", ["p", "v"], ["y"], equation=f"{letters}hij,{letters}hjd->{letters}hid")]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(q_shape)) for n in ("q", "k", "v", "y")]
    graph = helper.make_graph(nodes, "window_attention", vi[:3], vi[3:],
                              [helper.make_tensor("s", TensorProto.FLOAT, [], [k_scale]),
                               helper.make_tensor("bias", TensorProto.FLOAT, bias.shape, bias.ravel())])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@pytest.mark.parametrize("q_shape,mask_shape,fused", [
    ((2, 3, 2, 7, 4), (1, 2, 7, 7), True),        # MaxViT: 5-D, the bias broadcast over the windows
    ((2, 3, 2, 7, 4), (1, 1, 2, 7, 7), True),     # a 5-D mask of leading ones: reshaped to 4-D
    ((2, 3, 2, 7, 4), (2, 3, 2, 7, 7), True),     # a mask per window: merged with the batch
    ((2, 3, 2, 7, 4), (2, 1, 2, 7, 7), False),    # neither broadcast nor q's own: not fused
    ((2, 7, 4), (2, 7, 7), True),                 # 3-D: one batch
    ((2, 2, 3, 2, 5, 4), (2, 5, 5), True),        # 6-D
])
def test_attention_fuses_at_any_rank(q_shape, mask_shape, fused):
    model = _window_attention_model(q_shape, mask_shape)
    engine = kilnrt.build(model, device="cpu")
    kinds = [l.kind for l in engine.layers]
    assert kinds.count(LayerKind.ATTENTION) == int(fused), kinds
    assert LayerKind.EINSUM not in kinds  # lowered either way
    rng = np.random.default_rng(fresh_seed())
    feeds = {n: rng.standard_normal(q_shape).astype(np.float32) for n in "qkv"}
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(engine.run(feeds)["y"], ref, rtol=1e-4, atol=1e-5)


def test_window_attention_with_a_dynamic_batch_fuses_and_runs_at_two_sizes():
    model = _window_attention_model((2, 3, 2, 7, 4), (1, 2, 7, 7))
    m = onnx.load_from_string(model)
    for vi in list(m.graph.input) + list(m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    model = m.SerializeToString()
    engine = kilnrt.build(model, device="cpu", profiles={n: ((1, 3, 2, 7, 4), (2, 3, 2, 7, 4), (4, 3, 2, 7, 4))
                                                          for n in "qkv"})
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == 1
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(fresh_seed())
    for batch in (1, 4):
        feeds = {n: rng.standard_normal((batch, 3, 2, 7, 4)).astype(np.float32) for n in "qkv"}
        np.testing.assert_allclose(engine.run(feeds)["y"], session.run(None, feeds)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_window_attention_on_the_gpu_in_half_precision():
    q_shape = (1, 64, 2, 49, 32)   # MaxViT-T's first stage at 224x224: 64 windows of 7x7, 2 heads of 32
    model = _window_attention_model(q_shape, (1, 2, 49, 49), k_scale=32 ** -0.5)
    engine = kilnrt.build(model, device="cuda", fp16=True)
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == 1
    rng = np.random.default_rng(fresh_seed())
    feeds = {n: rng.standard_normal(q_shape).astype(np.float32) for n in "qkv"}
    ref = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = np.asarray(engine.run(feeds)["y"], dtype=np.float32)
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 5e-3, rel


@st.composite
def attention_shapes(draw):
    """q/k/v of rank 3-6 (``[*lead, heads, n, dim]``) and a mask shape that broadcasts to the
    scores ``[*lead, heads, n, m]``: rank 1 to the scores' rank, each dim 1 or the scores'."""
    rank = draw(st.integers(3, 6))
    lead = tuple(draw(st.integers(1, 3)) for _ in range(rank - 3))
    heads, n, m, d = (draw(st.integers(1, 4)) for _ in range(4))
    scores = lead + (heads, n, m)
    mask_rank = draw(st.integers(1, rank))
    mask = tuple(draw(st.sampled_from([1, s])) for s in scores[rank - mask_rank:])
    return lead + (heads, n, d), lead + (heads, m, d), mask


def _attention_model(q_shape, k_shape, mask_shape, seed: int, mask_input: bool = False) -> bytes:
    """softmax(q @ k^T * 0.5 + mask) @ v as MatMul/Transpose/Mul/Add/Softmax/MatMul nodes, the
    mask a constant or (``mask_input``) an input of the model."""
    rank = len(q_shape)
    mask = np.random.default_rng(seed).standard_normal(mask_shape).astype(np.float32)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=perm),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Mul", ["qk", "s"], ["sc"]),
             helper.make_node("Add", ["sc", "mask"], ["sb"]),
             helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
              for n, s in (("q", q_shape), ("k", k_shape), ("v", k_shape))]
    constants = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])]
    if mask_input:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, list(mask_shape)))
    else:
        constants.append(helper.make_tensor("mask", TensorProto.FLOAT, mask.shape, mask.ravel()))
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


@settings(max_examples=40, deadline=None)
@given(case=attention_shapes(), seed=st.integers(0, 2**31 - 1), mask_input=st.booleans())
def test_attention_of_any_rank_and_mask_matches_onnx_runtime(case, seed, mask_input):
    """Fused where the mask's leading dims broadcast or are q's, and (a mask that is an input)
    its last dim is the keys' (the attention layer pads a shorter one as masked); right always."""
    q_shape, k_shape, mask_shape = case
    model = _attention_model(q_shape, k_shape, mask_shape, seed, mask_input)
    engine = kilnrt.build(model, device="cpu")
    rank = len(q_shape)
    full = (1,) * (rank - len(mask_shape)) + mask_shape
    lead = q_shape[:rank - 3]
    fusable = rank == 4 or all(d == 1 for d in full[:rank - 3]) or full[:rank - 3] == lead
    if mask_input and mask_shape[-1] != k_shape[-2]:
        fusable = False
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == int(fusable)
    rng = np.random.default_rng(seed)
    feeds = {"q": rng.standard_normal(q_shape).astype(np.float32),
             "k": rng.standard_normal(k_shape).astype(np.float32),
             "v": rng.standard_normal(k_shape).astype(np.float32)}
    if mask_input:
        feeds["mask"] = rng.standard_normal(mask_shape).astype(np.float32)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = engine.run(feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_contracted_index_broadcast_from_one_side_stays_an_einsum():
    """torch.einsum broadcasts a contracted index of size 1; a matmul cannot."""
    _lowered_matches_torch("bij,bjk->bik", [(2, 3, 1), (2, 4, 5)], lowered=False, seed=fresh_seed())


def test_keys_first_scores_lower_in_the_outputs_order():
    """``"bhjd,bhid->bhij"`` names k first: lowered as q @ k^T (no transpose after it)."""
    net = lower_einsum(_einsum_network("bhjd,bhid->bhij", [(2, 3, 6, 4), (2, 3, 5, 4)]))
    assert [l.kind for l in net.layers] == [LayerKind.MATRIX_MULTIPLY]
    _lowered_matches_torch("bhjd,bhid->bhij", [(2, 3, 6, 4), (2, 3, 5, 4)], lowered=True, seed=fresh_seed())


@pytest.mark.parametrize("q_shape,k_shape,v_shape,fused", [
    ((1, 5, 4), (3, 6, 4), (3, 6, 4), False),             # rank 3: one shared query set, per-batch keys
    ((2, 1, 5, 4), (2, 3, 6, 4), (2, 3, 6, 4), False),    # one query head against three K/V heads
    ((2, 2, 1, 5, 4), (2, 2, 3, 6, 4), (2, 2, 3, 6, 4), False),
    ((3, 5, 4), (1, 6, 4), (3, 6, 4), False),             # K shared, V not
    ((2, 3, 5, 4), (2, 1, 6, 4), (2, 1, 6, 4), True),     # one K/V head for three query heads
    ((2, 3, 5, 4), (1, 3, 6, 4), (1, 3, 6, 4), False),    # K/V shared over the batch
])
def test_attention_fuses_only_heads_it_reads_as_the_products_broadcast(q_shape, k_shape, v_shape, fused):
    rank = len(q_shape)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=perm), helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Softmax", ["qk"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s))
           for n, s in (("q", q_shape), ("k", k_shape), ("v", v_shape))]
    model = helper.make_model(helper.make_graph(nodes, "heads", ins,
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    engine = kilnrt.build(model, device="cpu")
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == int(fused)
    rng = np.random.default_rng(fresh_seed())
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in (("q", q_shape), ("k", k_shape), ("v", v_shape))}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = engine.run(feeds)["y"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_mask_that_broadcasts_the_scores_larger_is_not_fused():
    """q, k, v of batch 1 and a mask of batch 3: the sum has batch 3, attention's output would not."""
    model = _attention_model((1, 5, 4), (1, 6, 4), (3, 5, 6), seed=fresh_seed())
    engine = kilnrt.build(model, device="cpu")
    assert LayerKind.ATTENTION not in [l.kind for l in engine.layers]
    rng = np.random.default_rng(fresh_seed())
    feeds = {n: rng.standard_normal((1, 5 if n == "q" else 6, 4)).astype(np.float32) for n in "qkv"}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(engine.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)


def test_a_negative_scale_on_q_alone_fuses_and_matches():
    nodes = [helper.make_node("Mul", ["q", "s"], ["qs"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["qs", "kt"], ["qk"]), helper.make_node("Softmax", ["qk"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"])]
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 5, 4]) for n in ("q", "k", "v", "y")]
    model = helper.make_model(helper.make_graph(nodes, "neg", vi[:3], vi[3:],
                                                [helper.make_tensor("s", TensorProto.FLOAT, [], [-0.7])]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    engine = kilnrt.build(model, device="cpu")
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == 1
    rng = np.random.default_rng(fresh_seed())
    feeds = {n: rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for n in "qkv"}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(engine.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)


def test_a_gathered_mask_keeps_double_precision():
    """Two constant terms in a float64 network: the gathered mask is float64 too."""
    rng = np.random.default_rng(fresh_seed())
    b1, b2 = rng.standard_normal((1, 3, 5, 6)), rng.standard_normal((1, 1, 5, 6))
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Add", ["qk", "b1"], ["s1"]), helper.make_node("Add", ["s1", "b2"], ["s2"]),
             helper.make_node("Softmax", ["s2"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, s) for n, s in (("q", [2, 3, 5, 4]), ("k", [2, 3, 6, 4]),
                                                                                   ("v", [2, 3, 6, 4]))]
    model = helper.make_model(helper.make_graph(
        nodes, "double", ins, [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        [helper.make_tensor("b1", TensorProto.DOUBLE, b1.shape, b1.ravel()),
         helper.make_tensor("b2", TensorProto.DOUBLE, b2.shape, b2.ravel())]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    engine = kilnrt.build(model, device="cpu")
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == 1
    feeds = {"q": rng.standard_normal((2, 3, 5, 4)), "k": rng.standard_normal((2, 3, 6, 4)),
             "v": rng.standard_normal((2, 3, 6, 4))}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(engine.run(feeds)["y"], want, rtol=1e-12, atol=1e-12)


def test_rank5_attention_with_a_dynamic_sequence_runs_at_length_zero():
    """The reshapes around the layer take the unknown length as -1; no keys give an empty result."""
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 2, 4, 3]),
             helper.make_node("MatMul", ["q", "kt"], ["qk"]), helper.make_node("Mul", ["qk", "s"], ["sc"]),
             helper.make_node("Softmax", ["sc"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 2, "S", 4]) for n in "qkv"]
    model = helper.make_model(helper.make_graph(nodes, "a", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                                [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5])]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    engine = kilnrt.build(model, device="cpu", profiles={n: ((2, 3, 2, 0, 4), (2, 3, 2, 5, 4), (2, 3, 2, 8, 4))
                                                          for n in "qkv"})
    assert [l.kind for l in engine.layers].count(LayerKind.ATTENTION) == 1
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(fresh_seed())
    for length in (0, 3, 8):
        feeds = {n: rng.standard_normal((2, 3, 2, length, 4)).astype(np.float32) for n in "qkv"}
        got, want = engine.run(feeds)["y"], session.run(None, feeds)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_reshapes_that_cancel_between_scores_and_softmax_fuse_without_a_mask():
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), helper.make_node("MatMul", ["q", "kt"], ["qk"]),
             helper.make_node("Reshape", ["qk", "s5"], ["r5"]), helper.make_node("Reshape", ["r5", "s4"], ["r4"]),
             helper.make_node("Softmax", ["r4"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["y"])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 3, 5, 4]) for n in "qkv"]
    model = helper.make_model(helper.make_graph(
        nodes, "cancel", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s5", TensorProto.INT64, [5], [2, 2, 3, 5, 5]),
         helper.make_tensor("s4", TensorProto.INT64, [4], [4, 3, 5, 5])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    engine = kilnrt.build(model, device="cpu")
    assert [(l.kind, len(l.inputs)) for l in engine.layers] == [(LayerKind.ATTENTION, 3)]
    rng = np.random.default_rng(fresh_seed())
    feeds = {n: rng.standard_normal((4, 3, 5, 4)).astype(np.float32) for n in "qkv"}
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(engine.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
