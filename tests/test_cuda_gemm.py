"""Our Triton GEMM and convolution tactics on the GPU against a float64 reference, float16 and
bfloat16, at sizes that are not multiples of the tiles: every tile configuration of the GEMM,
the 1x1-convolution GEMM and the depthwise convolution, and cuDNN's convolution with its
epilogue as one Triton pass.  Skipped without a GPU."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before anything imports triton (other files run it interpreted)
    pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)", allow_module_level=True)

from kilnrt.kernels.registry import TacticContext, get_tactic, reference_kernel
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network
from kilnrt.network.layers import ActivationType as A, LayerKind, MatrixMultiplyParams, MatrixOperation
from kilnrt.testing import fresh_seed

pytestmark = pytest.mark.cuda
DT = {torch.float16: DataType.HALF, torch.bfloat16: DataType.BF16}


def _names():
    from kilnrt.kernels.triton.gemm import CONFIGS, TritonGemm

    return [TritonGemm(*c).name for c in CONFIGS]


def _linear_layer(dtype, lead, k, n, act):
    """``act(x @ w.T + b)`` with x ``lead + [k]`` as a layer, its random constant ``w`` ``[n, k]``
    and ``b`` ``[n]`` on the GPU, and the tactic context holding them."""
    net = Network()
    ins = [net.add_input("x", DT[dtype], lead + (k,)), net.add_input("w", DT[dtype], (n, k)),
           net.add_input("b", DT[dtype], (n,))]
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY,
                          MatrixMultiplyParams(op1=MatrixOperation.TRANSPOSE, activation=act), ins)
    w = (torch.randn(n, k, device="cuda") / k ** 0.5).to(dtype)
    b = torch.randn(n, device="cuda").to(dtype)
    return layer, w, b, TacticContext(torch.device("cuda"), {"w": w, "b": b})


@pytest.mark.parametrize("name", _names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead,k,n,act", [((1,), 72, 24, A.GELU_ERF), ((129,), 768, 2304, None),
                                          ((3, 67), 200, 136, A.RELU), ((128,), 3072, 768, A.TANH)])
def test_triton_gemm_on_gpu(name, dtype, lead, k, n, act):
    seed = fresh_seed()
    torch.manual_seed(seed)
    layer, w, b, ctx = _linear_layer(dtype, lead, k, n, act)
    tac = get_tactic(name)
    assert tac.supports(layer, ctx)
    state = tac.prepare(layer, ctx)
    for x in (torch.randn(lead + (k,), device="cuda").to(dtype),
              torch.randn(tuple(reversed(lead)) + (k,), device="cuda").to(dtype).transpose(0, -2)
              if len(lead) == 2 else torch.randn(lead + (k,), device="cuda").to(dtype)):
        out = tac.run(state, [x, w, b])[0]
        ref = reference_kernel(LayerKind.MATRIX_MULTIPLY)(layer.params, x.double(), w.double(), b.double())
        tol = 2e-2 if dtype == torch.float16 else 5e-2
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{name} seed={seed}\n{m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", [A.GELU_ERF, A.GELU_TANH])
@pytest.mark.parametrize("lead,k,n,bias,transposed_w", [((1,), 72, 24, True, True), ((129,), 768, 3072, True, True),
                                                        ((3, 67), 200, 136, False, True), ((50,), 96, 37, True, False)])
def test_cublaslt_gelu_epilogue_on_gpu(dtype, act, lead, k, n, bias, transposed_w):
    """cuBLASLt's GELU+bias epilogue (tanh form) against the exact float64 GELU of either form,
    within float16/bfloat16 tolerance; also on a transposed input view and with no bias."""
    seed = fresh_seed()
    torch.manual_seed(seed)
    net = Network()
    wshape = (n, k) if transposed_w else (k, n)
    ins = [net.add_input("x", DT[dtype], lead + (k,)), net.add_input("w", DT[dtype], wshape)]
    w = (torch.randn(wshape, device="cuda") / k ** 0.5).to(dtype)
    consts = {"w": w}
    if bias:
        ins.append(net.add_input("b", DT[dtype], (n,)))
        consts["b"] = torch.randn(n, device="cuda").to(dtype)
    op1 = MatrixOperation.TRANSPOSE if transposed_w else MatrixOperation.NONE
    layer = net.add_layer(LayerKind.MATRIX_MULTIPLY, MatrixMultiplyParams(op1=op1, activation=act), ins)
    ctx = TacticContext(torch.device("cuda"), consts)
    tac = get_tactic("cuda.matrix_multiply.cublaslt_gelu")
    assert tac.supports(layer, ctx)
    state = tac.prepare(layer, ctx)
    xs = [torch.randn(lead + (k,), device="cuda").to(dtype)]
    if len(lead) == 2:
        xs.append(torch.randn(tuple(reversed(lead)) + (k,), device="cuda").to(dtype).transpose(0, -2))
    for x in xs:
        args = [x, w] + ([consts["b"]] if bias else [])
        out = tac.run(state, args)[0]
        assert out.shape == lead + (n,) and out.dtype == dtype
        ref = reference_kernel(LayerKind.MATRIX_MULTIPLY)(layer.params, *(t.double() for t in args))
        tol = 2e-2 if dtype == torch.float16 else 5e-2
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"seed={seed}\n{m}")
        rel = ((out.double() - ref).norm() / ref.norm()).item()
        assert rel < (2e-3 if dtype == torch.float16 else 1e-2), f"relative L2 {rel:.2e}, seed={seed}"


@pytest.mark.parametrize("act,alpha,beta,residual,groups", [
    ("clip", 0.0, 6.0, False, 32),          # MobileNet: depthwise + ReLU6
    ("silu", 0.0, 0.0, False, 1),           # EfficientNet
    (None, 0.0, 0.0, True, 1),              # bias + residual, no activation
    ("relu", 0.0, 0.0, True, 1)])
def test_conv_triton_epilogue_on_gpu(act, alpha, beta, residual, groups):
    from kilnrt.network.layers import ActivationType, ConvolutionParams

    seed = fresh_seed()
    torch.manual_seed(seed)
    c = k = 32 if groups > 1 else 24
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=(3, 3), stride_nd=(2, 2), pre_padding=(1, 1),
                               post_padding=(1, 1), num_groups=groups,
                               activation=None if act is None else ActivationType(act),
                               activation_alpha=alpha, activation_beta=beta)
    x = torch.randn(3, c, 17, 13, device="cuda").half().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(k, c // groups, 3, 3, device="cuda") / 3).half()
    b = torch.randn(k, device="cuda").half()
    net = Network()
    ins = [net.add_input("x", DataType.HALF, tuple(x.shape)), net.add_input("w", DataType.HALF, tuple(w.shape)),
           net.add_input("b", DataType.HALF, (k,))]
    ref_args = [x.double(), w.double(), b.double()]
    r = None
    if residual:
        r = torch.randn(3, k, 9, 7, device="cuda").half()
        ins.append(net.add_input("r", DataType.HALF, tuple(r.shape)))
        ref_args.append(r.double())
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    ctx = TacticContext(torch.device("cuda"), {"w": w, "b": b})
    tac = get_tactic("cuda.convolution.cudnn_nhwc_triton_epilogue")
    assert tac.supports(layer, ctx)
    out = tac.run(tac.prepare(layer, ctx), [x, w, b] + ([r] if residual else []))[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(params, *ref_args)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2, msg=lambda m: f"seed={seed}\n{m}")


def _depthwise_names():
    from kilnrt.kernels.triton.depthwise import CONFIGS, TritonDepthwiseConv

    return [TritonDepthwiseConv(*c).name for c in CONFIGS]


@pytest.mark.parametrize("name", _depthwise_names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c,window,stride,pad,act,residual,shape", [
    (144, 3, 2, 1, "clip", False, (1, 144, 15, 15)),      # MobileNet, batch 1, odd spatial size
    (96, 7, 1, 3, None, True, (5, 96, 14, 11)),           # ConvNeXt (residual only for coverage)
    (40, 5, 1, 2, "silu", False, (3, 40, 9, 17)),         # EfficientNet; channels not a power of 2
])
def test_triton_depthwise_on_gpu(name, dtype, c, window, stride, pad, act, residual, shape):
    from kilnrt.network.layers import ActivationType, ConvolutionParams

    seed = fresh_seed()
    torch.manual_seed(seed)
    params = ConvolutionParams(num_output_maps=c, kernel_size_nd=(window, window), stride_nd=(stride, stride),
                               pre_padding=(pad, pad), post_padding=(pad, pad), num_groups=c,
                               activation=None if act is None else ActivationType(act),
                               activation_beta=6.0 if act == "clip" else 0.0)
    x = torch.randn(shape, device="cuda").to(dtype)   # NCHW: the tactic converts to channels-last itself
    w = (torch.randn(c, 1, window, window, device="cuda") / window).to(dtype)
    b = torch.randn(c, device="cuda").to(dtype)
    net = Network()
    ins = [net.add_input("x", DT[dtype], shape), net.add_input("w", DT[dtype], tuple(w.shape)),
           net.add_input("b", DT[dtype], (c,))]
    ref_args = [x.double(), w.double(), b.double()]
    out_shape = reference_kernel(LayerKind.CONVOLUTION)(params, *ref_args).shape
    r = None
    if residual:
        r = torch.randn(out_shape, device="cuda").to(dtype)
        ins.append(net.add_input("r", DT[dtype], tuple(out_shape)))
        ref_args.append(r.double())
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    ctx = TacticContext(torch.device("cuda"), {"w": w, "b": b})
    tac = get_tactic(name)
    if not tac.supports(layer, ctx):
        assert tac.block_c > 2 * c, f"{name} declined a depthwise convolution of {c} channels"
        return
    out = tac.run(tac.prepare(layer, ctx), [x, w, b] + ([r] if residual else []))[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(params, *ref_args)
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{name} seed={seed}\n{m}")


def _implicit_names():
    from kilnrt.kernels.triton.conv_implicit import CONFIGS, TritonImplicitConv

    return [TritonImplicitConv(*c).name for c in CONFIGS]


@pytest.mark.parametrize("name", _implicit_names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c,k,shape,window,stride,act,residual", [
    (256, 256, (1, 256, 14, 14), 3, 1, "relu", True),   # ResNet-50 layer3, batch 1: split K
    (512, 512, (1, 512, 7, 7), 3, 1, "relu", False),    # layer4, batch 1: 8 tiles, split 16 ways
    (128, 72, (3, 128, 15, 13), 3, 2, None, True),      # stride 2, odd sizes, channels not a tile multiple
    (64, 64, (2, 64, 23, 23), 7, 2, "silu", False),     # a 7x7 stride-2 window
])
def test_triton_implicit_conv_on_gpu(name, dtype, c, k, shape, window, stride, act, residual):
    from kilnrt.network.layers import ActivationType, ConvolutionParams

    seed = fresh_seed()
    torch.manual_seed(seed)
    pad = window // 2
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=(window, window), stride_nd=(stride, stride),
                               pre_padding=(pad, pad), post_padding=(pad, pad),
                               activation=None if act is None else ActivationType(act))
    x = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(k, c, window, window, device="cuda") / (c * window * window) ** 0.5).to(dtype)
    b = torch.randn(k, device="cuda").to(dtype)
    net = Network()
    ins = [net.add_input("x", DT[dtype], shape), net.add_input("w", DT[dtype], tuple(w.shape)),
           net.add_input("b", DT[dtype], (k,))]
    ref_args = [x.double(), w.double(), b.double()]
    out_shape = reference_kernel(LayerKind.CONVOLUTION)(params, *ref_args).shape
    args = [x, w, b]
    if residual:
        args.append(torch.randn(out_shape, device="cuda").to(dtype))
        ins.append(net.add_input("r", DT[dtype], tuple(out_shape)))
        ref_args.append(args[-1].double())
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    ctx = TacticContext(torch.device("cuda"), {"w": w, "b": b})
    tac = get_tactic(name)
    assert tac.supports(layer, ctx)
    state = tac.prepare(layer, ctx)
    out = tac.run(state, args)[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(params, *ref_args)
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{name} seed={seed}\n{m}")
    assert torch.equal(tac.run(state, args)[0], out), "split-K partials must add up in a fixed order"


def _split_k_gemm_names():
    from kilnrt.kernels.triton.conv_implicit import SPLIT_K_GEMM_CONFIGS, TritonSplitKGemm

    return [TritonSplitKGemm(*c).name for c in SPLIT_K_GEMM_CONFIGS]


@pytest.mark.parametrize("name", _split_k_gemm_names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead,k,n,act", [((1,), 2048, 1000, None),          # ResNet-50's classifier, batch 1
                                          ((1, 128), 3072, 768, None),      # BERT-base FFN output, batch 1
                                          ((3,), 1480, 200, A.RELU)])       # K not a tile multiple
def test_triton_split_k_gemm_on_gpu(name, dtype, lead, k, n, act):
    seed = fresh_seed()
    torch.manual_seed(seed)
    layer, w, b, ctx = _linear_layer(dtype, lead, k, n, act)
    tac = get_tactic(name)
    if not tac.supports(layer, ctx):  # offered only where the reduction splits (8 tiles x 1 on 132 SMs)
        assert lead == (1, 128) and "16x64x128" in name, name
        return
    state = tac.prepare(layer, ctx)
    x = torch.randn(lead + (k,), device="cuda").to(dtype)
    out = tac.run(state, [x, w, b])[0]
    ref = reference_kernel(LayerKind.MATRIX_MULTIPLY)(layer.params, x.double(), w.double(), b.double())
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{name} seed={seed}\n{m}")
    assert torch.equal(tac.run(state, [x, w, b])[0], out)


def _conv_gemm_names():
    from kilnrt.kernels.triton.conv_gemm import CONFIGS, TritonConvGemm

    return [TritonConvGemm(*c).name for c in CONFIGS]


@pytest.mark.parametrize("name", _conv_gemm_names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c,k,shape,act,residual", [
    (16, 96, (2, 16, 37, 29), "clip", False),     # MobileNet expand + ReLU6, odd pixel count
    (576, 96, (1, 576, 14, 14), None, True),      # project + residual, batch 1
    (40, 240, (5, 40, 7, 9), "silu", False),      # EfficientNet
])
def test_triton_conv_gemm_on_gpu(name, dtype, c, k, shape, act, residual):
    from kilnrt.network.layers import ActivationType, ConvolutionParams

    seed = fresh_seed()
    torch.manual_seed(seed)
    params = ConvolutionParams(num_output_maps=k, kernel_size_nd=(1, 1), activation=None if act is None
                               else ActivationType(act), activation_beta=6.0 if act == "clip" else 0.0)
    x = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(k, c, 1, 1, device="cuda") / c ** 0.5).to(dtype)
    b = torch.randn(k, device="cuda").to(dtype)
    net = Network()
    ins = [net.add_input("x", DT[dtype], shape), net.add_input("w", DT[dtype], (k, c, 1, 1)),
           net.add_input("b", DT[dtype], (k,))]
    args = [x, w, b]
    if residual:
        args.append(torch.randn((shape[0], k) + shape[2:], device="cuda").to(dtype)
                    .contiguous(memory_format=torch.channels_last))
        ins.append(net.add_input("r", DT[dtype], tuple(args[-1].shape)))
    layer = net.add_layer(LayerKind.CONVOLUTION, params, ins)
    tac = get_tactic(name)
    ctx = TacticContext(torch.device("cuda"), {"w": w, "b": b})
    assert tac.supports(layer, ctx)
    out = tac.run(tac.prepare(layer, ctx), args)[0]
    ref = reference_kernel(LayerKind.CONVOLUTION)(params, *(a.double() for a in args))
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"{name} seed={seed}\n{m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape,channels_last", [
    ((1, 32, 112, 112), True),    # EfficientNet-B0's first squeeze-excitation pool: many splits
    ((1, 1152, 7, 7), True),      # its last
    ((3, 67, 13, 11), True),      # odd channels and pixels
    ((256, 2048, 7, 7), True),    # ResNet-50's final pool at batch 256: one split
    ((2, 40, 28, 28), False),     # NCHW
])
def test_triton_spatial_mean_on_gpu(dtype, shape, channels_last):
    from kilnrt.kernels.triton.reduce import spatial_reduce

    seed = fresh_seed()
    torch.manual_seed(seed)
    x = (torch.randn(shape, device="cuda") + 0.5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = spatial_reduce(x, True, True)
    assert got.shape == (shape[0], shape[1], 1, 1) and got.dtype == dtype
    want = x.double().mean((2, 3), keepdim=True)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=lambda m: f"seed={seed}\n{m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,s,act,gate", [
    ((1, 32, 112, 112), 8, "silu", "sigmoid"),         # EfficientNet-B0's first block, batch 1: many splits
    ((1, 1152, 7, 7), 48, "silu", "sigmoid"),          # its last: channels over several programs
    ((256, 672, 14, 14), 28, "silu", "sigmoid"),       # batch 256: one program per image, every channel
    ((3, 72, 13, 11), 24, "relu", "hard_sigmoid"),     # MobileNetV3-style, odd sizes
])
def test_triton_squeeze_excitation_on_gpu(dtype, shape, s, act, gate):
    from kilnrt.network.layers import ActivationType, SqueezeExcitationParams

    seed = fresh_seed()
    torch.manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    w1 = (torch.randn(s, c, 1, 1, device="cuda") / c ** 0.5).to(dtype)
    w2 = (torch.randn(c, s, 1, 1, device="cuda") * 2 / s ** 0.5).to(dtype)
    b1, b2 = torch.randn(s, device="cuda").to(dtype), torch.randn(c, device="cuda").to(dtype)
    hs = (1 / 6, 0.5) if gate == "hard_sigmoid" else (0.0, 0.0)
    params = SqueezeExcitationParams(ActivationType(act), ActivationType(gate), gate_alpha=hs[0], gate_beta=hs[1])
    net = Network()
    ins = [net.add_input("x", DT[dtype], shape), net.add_input("w1", DT[dtype], (s, c, 1, 1)),
           net.add_input("b1", DT[dtype], (s,)), net.add_input("w2", DT[dtype], (c, s, 1, 1)),
           net.add_input("b2", DT[dtype], (c,))]
    layer = net.add_layer(LayerKind.SQUEEZE_EXCITATION, params, ins)
    tac = get_tactic("cuda.squeeze_excitation.triton")
    ctx = TacticContext(torch.device("cuda"), {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    assert tac.supports(layer, ctx)
    out = tac.run(tac.prepare(layer, ctx), [x])[0]
    ref = reference_kernel(LayerKind.SQUEEZE_EXCITATION)(params, *(t.double() for t in (x, w1, b1, w2, b2)))
    tol = 3e-3 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f"seed={seed}\n{m}")


def test_programmatic_dependent_launch_changes_no_bits():
    """A chain of our kernels (GEMM + GELU, LayerNorm with a residual, GEMM, softmax) replayed
    from a CUDA graph gives the same bits with programmatic dependent launch on and off: each
    kernel waits for the one before it before touching memory."""
    import kilnrt.kernels.triton as kt
    from kilnrt.kernels.triton.gemm import config_dict, gemm

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs Hopper or later")
    seed = fresh_seed()
    torch.manual_seed(seed)
    x = torch.randn(300, 768, device="cuda").half()
    w1, w2 = ((torch.randn(768, 768, device="cuda") / 768 ** 0.5).half() for _ in range(2))
    norm = get_tactic("cuda.normalization.triton")
    softmax = get_tactic("cuda.softmax.triton")
    from kilnrt.network.layers import NormalizationParams, SoftmaxParams

    def chain():
        h = gemm(x, w1, None, None, "gelu_erf", 0.0, 0.0, config_dict(64, 64, 128, 4, 4))
        h = norm.run(NormalizationParams(axes=(1,), epsilon=1e-5), [h, None, None, x])[0]
        h = gemm(h, w2, None, None, "none", 0.0, 0.0, config_dict(64, 128, 64, 3, 4))
        return softmax.run(SoftmaxParams(axis=1), [h])[0]

    results = []
    old = os.environ.get("KILNRT_PDL")
    try:
        for flag in ("0", "1"):
            os.environ["KILNRT_PDL"] = flag
            kt.programmatic_launch.cache_clear()
            chain()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = chain()
            graph.replay()
            results.append(out.clone())
    finally:
        if old is None:
            del os.environ["KILNRT_PDL"]
        else:
            os.environ["KILNRT_PDL"] = old
        kt.programmatic_launch.cache_clear()
    assert torch.equal(results[0], results[1]), f"seed={seed}"


@pytest.mark.parametrize("name", ["cuda.normalization.triton", "cuda.normalization.layer_norm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_normalization_stores_the_residual_sum_on_gpu(name, dtype):
    """A pre-norm transformer's add + norm: y = norm(x + r) and the sum x + r, both outputs."""
    from kilnrt.network.layers import NormalizationParams

    seed = fresh_seed()
    torch.manual_seed(seed)
    shape = (3, 197, 768)
    p = NormalizationParams(axes=(2,), epsilon=1e-6, sum_output=True)
    net = Network()
    ins = [net.add_input("x", DT[dtype], shape), net.add_input("g", DT[dtype], (768,)),
           net.add_input("b", DT[dtype], (768,)), net.add_input("r", DT[dtype], shape)]
    layer = net.add_layer(LayerKind.NORMALIZATION, p, ins, num_outputs=2)
    x, r = (torch.randn(shape, device="cuda").to(dtype) for _ in range(2))
    g, b = torch.rand(768, device="cuda").to(dtype) + 0.5, torch.randn(768, device="cuda").to(dtype)
    tac = get_tactic(name)
    ctx = TacticContext(torch.device("cuda"))
    assert tac.supports(layer, ctx)
    y, total = tac.run(tac.prepare(layer, ctx), [x, g, b, r])
    want_y, _ = reference_kernel(LayerKind.NORMALIZATION)(p, x.double(), g.double(), b.double(), r.double())
    assert torch.equal(total, x + r), f"seed={seed}"
    tol = 2e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(y.double(), want_y, rtol=tol, atol=tol, msg=lambda m: f"{name} seed={seed}\n{m}")
