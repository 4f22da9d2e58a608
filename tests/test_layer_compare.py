"""benchmarks/layer_compare.py: the op-family classifiers, the mapping of GPU kernels back to
engine layers, and an end-to-end run on the CPU (kilnrt against torch eager) on a tiny model."""
from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kilnrt.network.layers import LayerKind

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("kilnrt_layer_compare", ROOT / "benchmarks" / "layer_compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclass looks itself up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# Kernel names as profilers print them (H100/H200/A100 traces of cuDNN, cuBLAS, CUTLASS,
# PyTorch, Inductor), kilnrt's own Triton kernels (the @triton.jit functions in
# kilnrt/kernels/triton/), and aten ops as the CPU profiler names them.
KERNELS = {
    "convolution": [
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_g1_"
        "execute_segment_k_off_kernel__5x_cudnn",
        "sm80_xmma_fprop_implicit_gemm_indexed_wo_smem_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize32x32x64_stage1_"
        "warpsize2x1x1_g1_tensor16x8x16_kernel",
        "void cudnn::cnn::conv2d_grouped_direct_kernel<false, true, false, false, 0, 0, int, __half, __half, __half, "
        "__half, float, float>(cudnn::cnn::GroupedDirectFpropParams, __half const*, __half const*, __half*)",
        "void implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>(int, int, int, "
        "float const*, int, float*, float const*, kernel_conv_params, unsigned long long, int, float, float, int)",
        "cutlass_tensorop_f16_s16816fprop_optimized_f16_256x128_32x3_nhwc_align8",
        "void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<3, c10::Half, int>(...)",
        "_conv_nhwc", "_depthwise_nhwc", "_add_partials", "aten::conv2d", "aten::mkldnn_convolution",
    ],
    "matmul": [
        "nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNN",
        "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_"
        "kernel__5x_cublas",
        "ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_tn",
        "void cublasLt::splitKreduce_kernel<32, 16, int, __half, __half, float, __half, true, false, false>"
        "(cublasLt::cublasSplitKParams<float>, __half const*, __half const*, __half*, float const*, float const*)",
        "void gemv2T_kernel_val<int, int, __half, __half, float, float, 128, 16, 4, 4, false, false, "
        "cublasGemvParamsEx<int, cublasGemvTensorStridedBatched<__half const>, float> >(...)",
        "void cutlass::Kernel2<cutlass_80_tensorop_f16_s16816gemm_relu_f16_64x64_64x4_nn_align8>"
        "(cutlass_80_tensorop_f16_s16816gemm_relu_f16_64x64_64x4_nn_align8::Params)",
        "triton_tem_fused_mm_0", "triton_tem_fused_addmm_gelu_1",
        "_gemm", "_gemm_int8", "aten::linear", "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul",
        "aten::_scaled_mm",
    ],
    "attention": [
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4, false, false, cutlass::half_t, "
        "Flash_kernel_traits<64, 128, 128, 4, cutlass::half_t> >, false, false, false, false, false, true, false, "
        "false>(pytorch_flash::Flash_fwd_params)",
        "fmha_cutlassF_f16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::half_t, "
        "cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, c10::Half, float, c10::Half, "
        "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(c10::Half*, c10::Half const*, int)",
        "triton_per_fused__softmax_2", "triton_red_fused__softmax_amax_sub_3",
        "_attention", "_softmax_rows", "aten::softmax", "aten::scaled_dot_product_attention",
    ],
    "normalization": [
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::Half, float, false>(int, float, "
        "c10::Half const*, c10::Half const*, c10::Half const*, float*, float*, c10::Half*)",
        "void cudnn::bn_fw_inf_1C11_kernel_NCHW<float, float, true, 1>(float, float, cudnnTensorStruct, ...)",
        "triton_per_fused_native_layer_norm_0", "triton_poi_fused__native_batch_norm_legit_no_training_relu_3",
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1",   # RMSNorm written out
        "_norm_rows", "_norm_chunk_moments", "_norm_chunks", "aten::layer_norm", "aten::native_batch_norm",
        "aten::group_norm",
    ],
    "pointwise": [
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(at::TensorIteratorBase&, "
        "at::native::GeluType)::{lambda()#2}::operator()() const::{lambda(c10::Half)#1}, "
        "at::detail::Array<char*, 2> >(int, ...)",
        "void at::native::unrolled_elementwise_kernel<at::native::CUDAFunctor_add<c10::Half>, "
        "at::detail::Array<char*, 3> >(int, ...)",
        "triton_poi_fused_convolution_relu_0", "triton_poi_fused_add_gelu_6", "triton_poi_fused_addmm_silu_2",
        "_quantize",
        "triton_poi_fused_0", "pointwise_kernel",
        "aten::relu", "aten::clamp_min", "aten::add", "aten::mul", "aten::div_", "aten::sigmoid", "aten::hardswish",
        "aten::where", "aten::maximum",
    ],
    "pooling/reduction": [
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<c10::Half, at::native::MeanOps<float, float, "
        "float, float>, unsigned int, c10::Half, 4> >(...)",
        "void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::Half, float>(...)",
        "triton_poi_fused_max_pool2d_with_indices_2", "triton_red_fused_mean_3", "triton_per_fused_sum_1",
        "_pool_nhwc", "_spatial_partial", "_spatial_finish", "_se_gate",
        "aten::max_pool2d", "aten::adaptive_avg_pool2d", "aten::mean", "aten::sum", "aten::any",
    ],
    "data movement": [
        "void cudnn::ops::nchwToNhwcKernel<__half, __half, float, false, true, (cudnnKernelDataType_t)0>"
        "(cudnn::ops::nchw2nhwc_params_t<float>, __half const*, __half*)",
        "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::"
        "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::operator()() const::{lambda(c10::Half)#1}>"
        "(at::TensorIteratorBase&, ...)",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy_contig<at::native::(anonymous namespace)::"
        "OpaqueType<2u>, unsigned int, 4, 64, 64>(...)",
        "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::Half, long, unsigned int, 2, 2, -2, "
        "true>(...)",
        "void at::native::upsample_bilinear2d_out_frame<c10::Half, float>(...)",
        "Memcpy DtoD (Device -> Device)", "Memset (Device)",
        "triton_poi_fused_clone_1", "triton_poi_fused__unsafe_view_clone_permute_4", "triton_poi_fused_cat_5",
        "triton_poi_fused__to_copy_4", "triton_poi_fused_constant_pad_nd_7",
        "aten::reshape", "aten::transpose", "aten::t", "aten::cat", "aten::copy_", "aten::contiguous", "aten::to",
        "aten::permute", "aten::embedding",
    ],
    "other": ["aten::is_nonzero", "aten::item", "some_unknown_kernel"],
}


@pytest.mark.parametrize("family,name", [(f, n) for f, names in KERNELS.items() for n in names])
def test_kernel_names_classify(lc, family, name):
    assert lc.kernel_family(name) == family


def test_every_triton_kernel_of_kilnrt_is_in_the_table():
    import re

    named = {n for names in KERNELS.values() for n in names}
    found = set()
    for path in (ROOT / "kilnrt" / "kernels" / "triton").glob("*.py"):
        found |= set(re.findall(r"@triton\.jit[^\n]*\ndef (\w+)\(", path.read_text()))
    # device helpers inlined into the kernels above, never launched on their own
    helpers = {"activate", "store_epilogue", "apply_epilogue", "store_output", "quantize_tile", "round_saturate", "quantize_fp8_tile",
               "quantize_operand", "requantize", "wait_for_previous_kernel",
               "expm1", "log1p", "tanh", "softplus", "clamp", "pow_"}
    missing = found - helpers - named
    assert not missing, f"kilnrt Triton kernels without a family in the test table: {sorted(missing)}"
    assert "pointwise_kernel" in named   # generated from a template string, not found by the regex


def test_every_layer_kind_has_a_family(lc):
    for kind in LayerKind:
        assert lc.layer_family(kind) in lc.FAMILIES
    expected = {LayerKind.CONVOLUTION: "convolution", LayerKind.QUANTIZED_MATRIX_MULTIPLY: "matmul",
                LayerKind.ATTENTION: "attention", LayerKind.SOFTMAX: "attention",
                LayerKind.NORMALIZATION: "normalization", LayerKind.POINTWISE: "pointwise",
                LayerKind.ACTIVATION: "pointwise", LayerKind.SQUEEZE_EXCITATION: "pooling/reduction",
                LayerKind.POOLING: "pooling/reduction", LayerKind.SHUFFLE: "data movement",
                LayerKind.VIEW: "data movement", LayerKind.CONCATENATION: "data movement",
                LayerKind.CAST: "data movement", LayerKind.PLUGIN: "other", LayerKind.NMS: "other"}
    for kind, family in expected.items():
        assert lc.layer_family(kind) == family, kind


def test_a_kind_without_a_family_is_an_error(lc, monkeypatch):
    monkeypatch.delitem(lc.KIND_FAMILY, LayerKind.TOPK)
    with pytest.raises(KeyError, match="topk"):
        lc.layer_family(LayerKind.TOPK)


def _event(name, *, cuda=False, id=0, linked=0, parent=None, start=0.0, end=0.0, annotation=False):
    return SimpleNamespace(name=name, id=id, linked_correlation_id=linked, cpu_parent=parent,
                           is_user_annotation=annotation, time_range=SimpleNamespace(start=start, end=end),
                           device_type=torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU,
                           cpu_time_total=end - start)


def test_gpu_kernels_map_back_to_their_layers(lc):
    conv = _event("conv + relu", id=1, start=0, end=100, annotation=True)
    op = _event("aten::convolution", id=2, parent=conv, start=5, end=20)
    soft = _event("softmax", id=3, start=100, end=200, annotation=True)
    events = [
        conv, op, soft,
        _event("cudaLaunchKernel", id=2, linked=2, parent=op, start=6, end=8),  # a runtime call: its id collides
        _event("sm90_xmma_fprop_implicit_gemm", cuda=True, id=7, linked=2, start=30, end=60),   # via its aten op
        _event("conv + relu", cuda=True, start=30, end=60, annotation=True),   # the range on the GPU: not a kernel
        _event("_softmax_rows", cuda=True, id=8, linked=3, start=120, end=130),   # launched in the range itself
        _event("Memcpy DtoD (Device -> Device)", cuda=True, id=9, linked=99, start=150, end=151),   # by time
        _event("copy_outputs", cuda=True, id=10, linked=0, start=250, end=254),   # after every layer
    ]
    ks = lc.kernels_of(events, "cuda", {"conv + relu", "softmax"})
    assert [(k.name, k.layer) for k in ks] == [
        ("sm90_xmma_fprop_implicit_gemm", "conv + relu"), ("_softmax_rows", "softmax"),
        ("Memcpy DtoD (Device -> Device)", "softmax"), ("copy_outputs", None)]
    assert [k.ms for k in ks] == pytest.approx([0.030, 0.010, 0.001, 0.004])


def test_cpu_ops_count_once_at_the_top(lc):
    rng = _event("fc", start=0, end=50, annotation=True)
    linear = _event("aten::linear", parent=rng, start=1, end=40)
    events = [rng, linear, _event("aten::addmm", parent=linear, start=2, end=39),
              _event("aten::relu", start=60, end=70)]
    ks = lc.kernels_of(events, "cpu", {"fc"})
    assert [(k.name, k.layer) for k in ks] == [("aten::linear", "fc"), ("aten::relu", None)]
    assert ks[0].ms == pytest.approx(0.039)


TINY = '''
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
W = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
B = rng.standard_normal(8).astype(np.float32) * 0.1
FW = rng.standard_normal((10, 8)).astype(np.float32) * 0.3
FB = rng.standard_normal(10).astype(np.float32) * 0.1


def write_onnx(path, batch):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["z"], transB=1, name="fc"),
             helper.make_node("Softmax", ["z"], ["y"], axis=1, name="softmax")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(a, n) for a, n in [(W, "w"), (B, "b"), (FW, "fw"), (FB, "fb")]])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(W)); self.conv.bias.copy_(torch.from_numpy(B))
            self.fc.weight.copy_(torch.from_numpy(FW)); self.fc.bias.copy_(torch.from_numpy(FB))

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return torch.softmax(self.fc(x.mean((2, 3))), 1)


def make(batch):
    torch.manual_seed(0)
    return Tiny().eval(), {"x": torch.randn(batch, 3, 16, 16)}
'''


def test_end_to_end_on_the_cpu(lc, tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny_lc_model.py").write_text(textwrap.dedent(TINY))
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny_lc_model

    tiny_lc_model.write_onnx(str(tmp_path / "tiny.onnx"), 2)
    out = tmp_path / "layers.json"
    rc = lc.main(["--onnx", str(tmp_path / "tiny.onnx"), "--module", "tiny_lc_model:make", "--batch", "2",
                  "--device", "cpu", "--calls", "2", "--iters", "10", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["correct"] and doc["relerr"] < 1e-5 and doc["peer"]["mode"] == "eager" and doc["gpu"] == "cpu"
    fam = {f["family"]: f for f in doc["families"]}
    # kilnrt's engine: conv+relu, pool, mean, flatten, fc, softmax; each side's ops where they belong
    assert fam["convolution"]["kilnrt_layers"] == 1 and fam["convolution"]["kilnrt_ms"] > 0
    assert fam["convolution"]["peer_ms"] > 0 and fam["convolution"]["peer_kernels"] == 1
    assert fam["matmul"]["kilnrt_layers"] == 1 and fam["matmul"]["peer_kernels"] == 1
    assert fam["attention"]["peer_kernels"] == 1 and fam["attention"]["kilnrt_layers"] == 1
    assert fam["pooling/reduction"]["kilnrt_layers"] == 2
    for f in fam.values():
        assert f["ratio"] is None or f["ratio"] == pytest.approx(f["kilnrt_ms"] / f["peer_ms"], rel=1e-2)
    k, p = doc["kilnrt"], doc["peer"]
    assert sum(f["kilnrt_ms"] for f in fam.values()) == pytest.approx(k["kernel_ms"], rel=1e-3)
    assert sum(f["kilnrt_by_kernel_ms"] for f in fam.values()) == pytest.approx(k["kernel_ms"], rel=1e-3)
    assert sum(f["peer_ms"] for f in fam.values()) == pytest.approx(p["kernel_ms"], rel=1e-3)
    assert {r["name"] for r in k["layers"]} == {"conv + relu", "pool", "gap", "flat", "fc + fc/elementwise_1",
                                                 "softmax"}
    assert all(r["kernels"] >= 1 for r in k["layers"] if r["family"] in ("convolution", "matmul"))
    # the ops ran one after another inside the profiled calls: their sum is of the order of a
    # call's wall time, never more (a unit or attribution slip is off by far more)
    for side in (k, p):
        assert 0.02 * side["profiled_ms"] < side["kernel_ms"] <= side["profiled_ms"], side
        assert side["run_ms"] > 0
    table = capsys.readouterr().out
    assert "convolution" in table and "slowest kilnrt layers" in table and str(out) in table


def test_bad_arguments_are_refused(lc, capsys):
    with pytest.raises(SystemExit):
        lc.main(["--onnx", "m.onnx", "--device", "cpu"])
    assert "--onnx needs --module" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lc.main(["--onnx", "m.onnx", "--module", "x:y", "--device", "cpu", "--peer", "max"])
    assert "peer is torch eager" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="pkg.module:function"):
        lc.load_factory("nocolon")
