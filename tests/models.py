"""Models built in code for the tests: a small BERT-style encoder and tiny ONNX graphs.

``transformers`` is not a dependency, so :class:`TinyBert` re-implements the parts of
BERT that matter to an inference engine: token + position + segment embeddings, a
padding mask added to the attention scores as ``(1 - mask) * -10000``, multi-head
self-attention, LayerNorm, an erf-GELU feed-forward block and residuals.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
BERT_OUTPUTS = ("last_hidden_state", "pooler_output")


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [b, s, h*d] -> [b, h, s, d]
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask_bias
        context = torch.softmax(scores, dim=-1) @ v
        b, _, s, _ = context.shape
        return self.out(context.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.ffn_in = nn.Linear(hidden, ffn)
        self.ffn_out = nn.Linear(ffn, hidden)
        self.ffn_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, mask_bias))
        return self.ffn_norm(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))


class TinyBert(nn.Module):
    """BERT's encoder at toy size: ``(input_ids, attention_mask, token_type_ids) ->
    (last_hidden_state [b, s, hidden], pooler_output [b, hidden])``."""

    def __init__(self, vocab: int = 100, hidden: int = 64, heads: int = 4, layers: int = 2,
                 ffn: int = 128, max_positions: int = 64, type_vocab: int = 2) -> None:
        super().__init__()
        self.vocab, self.type_vocab, self.max_positions = vocab, type_vocab, max_positions
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        x = self.embedding_norm(x)
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask_bias)
        return x, torch.tanh(self.pooler(x[:, 0]))


def tiny_bert(seed: int = 0) -> TinyBert:
    """A TinyBert with deterministic weights, in eval mode."""
    torch.manual_seed(seed)
    return TinyBert().eval()


def bert_inputs(batch: int, seq: int, rng: np.random.Generator, vocab: int = 100,
                type_vocab: int = 2) -> dict[str, np.ndarray]:
    """Random BERT inputs: ids in range, segments 0/1, and padding (mask 0) at the end of
    some sequences (the first token of each sequence is always attended)."""
    ids = rng.integers(0, vocab, size=(batch, seq), dtype=np.int64)
    types = rng.integers(0, type_vocab, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    if batch > 1:
        lengths[0] = max(1, seq - 1 - seq // 3)   # at least one padded sequence when seq > 1
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def export_bert(model: TinyBert, opset: int = 17) -> onnx.ModelProto:
    """TorchScript-based ONNX export with dynamic batch and sequence dims."""
    example = bert_inputs(2, 8, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[n]) for n in BERT_INPUTS)
    dynamic = {n: {0: "batch", 1: "seq"} for n in BERT_INPUTS}
    dynamic[BERT_OUTPUTS[0]] = {0: "batch", 1: "seq"}
    dynamic[BERT_OUTPUTS[1]] = {0: "batch"}
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, args, buf, dynamo=False, opset_version=opset, input_names=list(BERT_INPUTS),
                          output_names=list(BERT_OUTPUTS), dynamic_axes=dynamic, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


# ----------------------------------------------------------------------------- tiny ONNX graphs
def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: Sequence[np.ndarray | onnx.TensorProto] = (),
               *, opset: int = 17, name: str = "test") -> onnx.ModelProto:
    inits = [t if isinstance(t, onnx.TensorProto) else numpy_helper.from_array(t) for t in initializers]
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def chain_model(width: int = 64, depth: int = 6, batch: int | str = 4) -> onnx.ModelProto:
    """x -> (MatMul + Add + Relu) * depth -> y: a straight chain of activations."""
    rng = np.random.default_rng(1)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}")
        b = numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, f"b{i}")
        inits += [w, b]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"MatMul_{i}"),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"], name=f"Add_{i}"),
                  helper.make_node("Relu", [f"add{i}"], [f"h{i}" if i < depth - 1 else "y"], name=f"Relu_{i}")]
        prev = f"h{i}"
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], inits, name="chain")


def two_input_model() -> onnx.ModelProto:
    """y = relu(x * s + b) with x [batch, 8] float and s [batch, 8] float, b an initializer;
    z = argmax-free integer path: idx (int64 [batch]) + 1."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"], name="Mul_0"),
             helper.make_node("Add", ["xs", "b"], ["pre"], name="Add_0"),
             helper.make_node("Relu", ["pre"], ["y"], name="Relu_0"),
             helper.make_node("Add", ["idx", "one"], ["z"], name="Add_1")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 8]),
              helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
               helper.make_tensor_value_info("z", TensorProto.INT64, ["batch"])]
    b = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "b")
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    return make_model(nodes, inputs, outputs, [b, one], name="two_inputs")


def nonzero_model() -> onnx.ModelProto:
    """y = NonZero(x > 0): int64 [rank, count], a data-dependent shape."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["pos"], name="Greater_0"),
             helper.make_node("NonZero", ["pos"], ["y"], name="NonZero_0")]
    zero = numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 5])],
                      [helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])], [zero], opset=13,
                      name="nonzero")


def small_cnn_model(batch: int | str = 2) -> onnx.ModelProto:
    """Conv -> Relu -> MaxPool -> Flatten -> Gemm -> Softmax on [batch, 2, 6, 6]: a few KB of plan."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.5
    cb = rng.standard_normal(4).astype(np.float32) * 0.1
    fw = rng.standard_normal((5, 16)).astype(np.float32) * 0.3
    fb = rng.standard_normal(5).astype(np.float32) * 0.1
    nodes = [helper.make_node("Conv", ["x", "w", "cb"], ["c"], name="Conv_0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="Relu_1"),
             helper.make_node("MaxPool", ["r"], ["p"], name="MaxPool_2", kernel_shape=[3, 3], strides=[3, 3]),
             helper.make_node("Flatten", ["p"], ["f"], name="Flatten_3"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="Gemm_4", transB=1),
             helper.make_node("Softmax", ["g"], ["y"], name="Softmax_5", axis=-1)]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (cb, "cb"), (fw, "fw"), (fb, "fb"))]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])], inits, name="small_cnn")


def inception_model(rng: np.random.Generator, channels: int = 16, widths: Sequence[int] = (7, 5, 3),
                    batch: int | str = "batch", hw: tuple[int, int] = (9, 11)) -> onnx.ModelProto:
    """An Inception-style block on x [batch, channels, H, W], its branches concatenated along the
    channels: three 1x1 convolutions of x with a Relu each (``widths`` output maps; the second
    has no bias and feeds a 3x3 convolution + Relu); a 3x3 convolution of x without activation;
    a 3x3 max pool of x, then a 1x1 convolution + Relu.  Random weights scaled by 1/sqrt(fan-in)."""

    def weight(name, k, c, size):
        return numpy_helper.from_array((rng.standard_normal((k, c, size, size)) / math.sqrt(c * size * size))
                                       .astype(np.float32), name)

    def bias(name, k):
        return numpy_helper.from_array((rng.standard_normal(k) * 0.5).astype(np.float32), name)

    w0, w1, w2 = widths
    inits = [weight("w0", w0, channels, 1), bias("b0", w0), weight("w1", w1, channels, 1),
             weight("w1b", 6, w1, 3), bias("b1b", 6), weight("w2", w2, channels, 1), bias("b2", w2),
             weight("w3", 4, channels, 3), bias("b3", 4), weight("w4", 5, channels, 1), bias("b4", 5)]
    conv = lambda ins, out, name, **kw: helper.make_node("Conv", ins, [out], name=name, **kw)  # noqa: E731
    relu = lambda i, o: helper.make_node("Relu", [i], [o], name=f"Relu_{o}")  # noqa: E731
    nodes = [conv(["x", "w0", "b0"], "c0", "Conv_1x1_a"), relu("c0", "a0"),
             conv(["x", "w1"], "c1", "Conv_1x1_b"), relu("c1", "r1"),
             conv(["r1", "w1b", "b1b"], "c1b", "Conv_3x3_b", pads=[1, 1, 1, 1]), relu("c1b", "a1"),
             conv(["x", "w2", "b2"], "c2", "Conv_1x1_c"), relu("c2", "a2"),
             conv(["x", "w3", "b3"], "a3", "Conv_3x3_d", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["x"], ["p4"], name="MaxPool_e", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             conv(["p4", "w4", "b4"], "c4", "Conv_1x1_e"), relu("c4", "a4"),
             helper.make_node("Concat", ["a0", "a1", "a2", "a3", "a4"], ["y"], name="Concat", axis=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, *hw])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, name="inception")


def shuffle_block_model(rng: np.random.Generator, half: int = 32, batch: int = 2,
                        hw: tuple[int, int] = (14, 14)) -> onnx.ModelProto:
    """A ShuffleNetV2 unit on x [batch, 2*half, H, W]: two branches of 1x1 convolutions + Relu
    (one and two deep) concatenated,
    the channel shuffle as exporters write it (Reshape to [N, 2, half, H, W], Transpose 0,2,1,
    Reshape back), a Split into halves, the second through a 1x1 convolution + Relu, and the
    halves concatenated again.  Random weights scaled by 1/sqrt(fan-in)."""
    c = 2 * half

    def weight(name, k, cin):
        return numpy_helper.from_array((rng.standard_normal((k, cin, 1, 1)) / math.sqrt(cin)).astype(np.float32), name)

    h, w = hw
    inits = [weight("wa", half, c), weight("wb", half, c), weight("wd", half, half), weight("wc", half, half),
             numpy_helper.from_array(np.array([batch, 2, half, h, w], np.int64), "split_shape"),
             numpy_helper.from_array(np.array([batch, c, h, w], np.int64), "merged_shape"),
             numpy_helper.from_array(np.array([half, half], np.int64), "halves")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["ca"]), helper.make_node("Relu", ["ca"], ["a"]),
             helper.make_node("Conv", ["x", "wb"], ["cb"]), helper.make_node("Relu", ["cb"], ["rb"]),
             helper.make_node("Conv", ["rb", "wd"], ["cd"]), helper.make_node("Relu", ["cd"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
             helper.make_node("Reshape", ["cat", "split_shape"], ["grouped"]),
             helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["swapped", "merged_shape"], ["shuffled"]),
             helper.make_node("Split", ["shuffled", "halves"], ["s0", "s1"], axis=1),
             helper.make_node("Conv", ["s1", "wc"], ["cc"]), helper.make_node("Relu", ["cc"], ["t"]),
             helper.make_node("Concat", ["s0", "t"], ["y"], axis=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, h, w])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, name="shuffle_block")
