"""Caffe deploy.prototxt + .caffemodel through kilnrt.caffe, trt.CaffeParser and `kilnrt exec --deploy`.

The files are written with kilnrt's own Caffe schema (no real Caffe is installable here), and once
with Caffe's own generated caffe_pb2 (the copy the mmdnn package ships); the reference is a
float64 PyTorch reimplementation of each layer's documented Caffe semantics, written
independently of kilnrt's converters (pooling by explicit window loops), and for SSD Caffe's
Normalize, Permute, PriorBox and DetectionOutput a float64 numpy one of its forward passes.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from google.protobuf import text_format

import kilnrt
import kilnrt.trt as trt
from kilnrt.caffe import parse, schema
from kilnrt.errors import KilnError
from kilnrt.testing import assert_close


# ----------------------------------------------------------------------------- writing files
def caffemodel(weights: dict[str, list[np.ndarray]], legacy_shape: bool = False) -> bytes:
    """A binary NetParameter holding each layer's blobs, as Caffe's snapshot writes them."""
    net = schema.NetParameter(name="weights")
    for name, blobs in weights.items():
        layer = net.layer.add(name=name, type="Whatever")
        for a in blobs:
            b = layer.blobs.add()
            if legacy_shape and a.ndim <= 4:
                dims = (1,) * (4 - a.ndim) + a.shape
                b.num, b.channels, b.height, b.width = dims
            else:
                b.shape.dim.extend(a.shape)
            b.data.extend(a.astype(np.float32).ravel().tolist())
    return net.SerializeToString()


def rand(rng, *shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def run(network, feeds):
    return kilnrt.build(network, device="cpu").run(feeds)


# ----------------------------------------------------------------------------- the reference
def caffe_pool(x: torch.Tensor, kind: str, k, s, p, ceil=True) -> torch.Tensor:
    """Caffe's PoolingLayer forward, written out: output size rounds up, a last window starting
    in the padding is dropped, averages divide by the window clipped to the padded extent."""
    n, c, h, w = x.shape
    def size(d, kk, ss, pp):
        o = (math.ceil if ceil else math.floor)((d + 2 * pp - kk) / ss) + 1
        if pp and (o - 1) * ss >= d + pp:
            o -= 1
        return o
    oh, ow = size(h, k[0], s[0], p[0]), size(w, k[1], s[1], p[1])
    out = torch.empty(n, c, oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            count = (he - hs) * (we - ws)
            win = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
            out[:, :, i, j] = win.amax((2, 3)) if kind == "MAX" else win.sum((2, 3)) / count
    return out


def ref_conv(x, w, b, stride=1, pad=0, dil=1, group=1):
    return F.conv2d(x, t64(w), None if b is None else t64(b), stride, pad, dil, group)


def ref_ip(x, w, b, axis=1):
    y = x.reshape(*x.shape[:axis], -1) @ t64(w).T
    return y + t64(b)


def ref_bn(x, mean, var, factor, eps=1e-5):
    f = 0.0 if factor == 0 else 1.0 / factor
    m, v = t64(mean).reshape(1, -1, 1, 1) * f, t64(var).reshape(1, -1, 1, 1) * f
    return (x - m) / torch.sqrt(v + eps)


def ref_lrn(x, size, alpha, beta, k):
    sq = F.pad((x * x).unsqueeze(1), (0, 0, 0, 0, size // 2, size // 2)).squeeze(1)
    c = x.shape[1]
    acc = sum(sq[:, i:i + c] for i in range(size))
    return x / (k + alpha / size * acc) ** beta


# ----------------------------------------------------------------------------- LeNet
LENET = """
name: "LeNet"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 28 input_dim: 28
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 4 kernel_size: 5 stride: 1 weight_filler { type: "xavier" } engine: CAFFE } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 6 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 0 } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1" inner_product_param { num_output: 20 } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" relu_param { negative_slope: 0.1 } }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" top: "loss" include { phase: TRAIN } }
"""


def lenet_weights(rng):
    return {"conv1": [rand(rng, 4, 1, 5, 5), rand(rng, 4)], "conv2": [rand(rng, 6, 4, 3, 5, lo=-0.3, hi=0.3), rand(rng, 6)],
            "ip1": [rand(rng, 20, 6 * 7 * 5, lo=-0.1, hi=0.1), rand(rng, 20)], "ip2": [rand(rng, 10, 20), rand(rng, 10)]}


def lenet_reference(x, wt):
    y = ref_conv(t64(x), *wt["conv1"])
    y = caffe_pool(y, "MAX", (2, 2), (2, 2), (0, 0))
    y = ref_conv(y, *wt["conv2"], pad=(1, 0))
    y = caffe_pool(y, "AVE", (3, 3), (2, 2), (1, 1))
    y = ref_ip(y, *wt["ip1"])
    y = torch.where(y > 0, y, 0.1 * y)
    y = ref_ip(y, *wt["ip2"])
    return torch.softmax(y, 1).numpy()


def test_lenet_matches_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    wt = lenet_weights(rng)
    deploy, model = tmp_path / "deploy.prototxt", tmp_path / "lenet.caffemodel"
    deploy.write_text(LENET)
    model.write_bytes(caffemodel(wt, legacy_shape=True))     # N, C, H, W blobs, as older snapshots
    net = parse(str(deploy), str(model))                       # outputs: the blobs no layer reads
    assert [t.name for t in net.outputs] == ["prob"] and [t.name for t in net.inputs] == ["data"]
    x = rand(rng, 2, 1, 28, 28)
    out = run(net, {"data": x})["prob"]
    assert out.shape == (2, 10)
    assert_close(out, lenet_reference(x, wt), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- BN, Scale, Eltwise, Concat, groups
BLOCK = """
name: "block"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 group: 2 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { use_global_stats: true eps: 0.001 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "prelu" type: "PReLU" bottom: "conv" top: "act" }
layer { name: "split" type: "Split" bottom: "act" top: "a" top: "b" }
layer { name: "side" type: "Convolution" bottom: "data" top: "side"
  convolution_param { num_output: 8 kernel_size: 1 stride: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "side" top: "sum" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "prod" type: "Eltwise" bottom: "b" bottom: "side" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "prod" bottom: "b" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "max" bottom: "sum" top: "cat" concat_param { axis: 1 } }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_ave" type: "Pooling" bottom: "cat" top: "pool_ave" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "gap" type: "Pooling" bottom: "pool" top: "gap" pooling_param { pool: AVE global_pooling: true } }
layer { name: "flat" type: "Flatten" bottom: "gap" top: "flat" }
layer { name: "sig" type: "Sigmoid" bottom: "flat" top: "sig" }
layer { name: "pow" type: "Power" bottom: "sig" top: "pow" power_param { power: 2 scale: 0.5 shift: 1 } }
layer { name: "tanh" type: "TanH" bottom: "pool_ave" top: "tanh" }
layer { name: "lrn" type: "LRN" bottom: "tanh" top: "lrn" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "resh" type: "Reshape" bottom: "lrn" top: "resh" reshape_param { shape { dim: 0 dim: -1 dim: 5 } } }
layer { name: "sm" type: "Softmax" bottom: "resh" top: "sm" softmax_param { axis: 2 } }
"""


def block_weights(rng):
    return {"conv": [rand(rng, 8, 2, 3, 3)],
            "bn": [rand(rng, 8) * 10, rand(rng, 8, lo=1, hi=3) * 10, np.array([10.0], np.float32)],
            "scale": [rand(rng, 8, lo=0.5, hi=1.5), rand(rng, 8)], "prelu": [rand(rng, 8, lo=0, hi=0.5)],
            "side": [rand(rng, 8, 4, 1, 1), rand(rng, 8)]}


def block_reference(x, wt):
    x = t64(x)
    y = ref_conv(x, wt["conv"][0], None, pad=2, dil=2, group=2)
    y = ref_bn(y, *wt["bn"][:2], float(wt["bn"][2][0]), eps=1e-3)
    y = y * t64(wt["scale"][0]).reshape(1, -1, 1, 1) + t64(wt["scale"][1]).reshape(1, -1, 1, 1)
    slope = t64(wt["prelu"][0]).reshape(1, -1, 1, 1)
    act = torch.where(y > 0, y, slope * y)
    side = ref_conv(x, *wt["side"])
    s = 0.5 * act - 2 * side
    prod = act * side
    mx = torch.maximum(torch.maximum(s, prod), act)
    cat = torch.cat([mx, s], 1)
    pool = caffe_pool(cat, "MAX", (3, 3), (2, 2), (1, 1))
    ave = caffe_pool(cat, "AVE", (2, 2), (2, 2), (0, 0))        # 9 -> 5 (ceil): the last window is cut
    gap = pool.mean((2, 3), keepdim=True)
    pw = (1 + 0.5 * torch.sigmoid(gap.reshape(2, -1))) ** 2
    lrn = ref_lrn(torch.tanh(ave), 3, 0.5, 0.75, 2.0)
    sm = torch.softmax(lrn.reshape(2, -1, 5), 2)
    return {"pow": pw.numpy(), "sm": sm.numpy(), "pool": pool.numpy(), "pool_ave": ave.numpy()}


def test_block_matches_the_reference():
    rng = np.random.default_rng(1)
    wt = block_weights(rng)
    outputs = ["pow", "sm", "pool", "pool_ave"]
    net = parse(BLOCK, caffemodel(wt), outputs)        # text and bytes work as well as paths
    x = rand(rng, 2, 4, 9, 9)
    got = run(net, {"data": x})
    want = block_reference(x, wt)
    assert got["pool"].shape == (2, 16, 5, 5) and got["pool_ave"].shape == (2, 16, 5, 5)
    for name in outputs:
        assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


def test_deconvolution_and_transposed_inner_product():
    rng = np.random.default_rng(2)
    text = """input: "x" input_shape { dim: 1 dim: 4 dim: 5 dim: 5 }
    layer { name: "up" type: "Deconvolution" bottom: "x" top: "up"
            convolution_param { num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2 } }
    layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc"
            inner_product_param { num_output: 3 axis: -1 transpose: true } }
    layer { name: "elu" type: "ELU" bottom: "fc" top: "fc" elu_param { alpha: 0.5 } }"""
    wt = {"up": [rand(rng, 4, 3, 4, 4), rand(rng, 6)], "fc": [rand(rng, 10, 3), rand(rng, 3)]}
    x = rand(rng, 1, 4, 5, 5)
    got = run(parse(text, caffemodel(wt)), {"x": x})["fc"]
    up = F.conv_transpose2d(t64(x), t64(wt["up"][0]), t64(wt["up"][1]), 2, 1, groups=2)
    want = F.elu(up @ t64(wt["fc"][0]) + t64(wt["fc"][1]), 0.5)
    assert got.shape == (1, 6, 10, 3)
    assert_close(got, want.numpy(), rtol=1e-4, atol=1e-5)


def test_legacy_v1_layers():
    rng = np.random.default_rng(3)
    text = """input: "data" input_dim: 1 input_dim: 2 input_dim: 4 input_dim: 4
    layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 3 } }
    layers { name: "relu" type: RELU bottom: "conv" top: "conv" }"""
    wt = {"conv": [rand(rng, 3, 2, 3, 3), rand(rng, 3)]}
    x = rand(rng, 1, 2, 4, 4)
    got = run(parse(text, caffemodel(wt)), {"data": x})["conv"]
    assert_close(got, torch.relu(ref_conv(t64(x), *wt["conv"])).numpy(), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- TensorRT's API, the CLI, build
def test_trt_caffe_parser(tmp_path):
    rng = np.random.default_rng(4)
    wt = lenet_weights(rng)
    deploy, model = tmp_path / "deploy.prototxt", tmp_path / "lenet.caffemodel"
    deploy.write_text(LENET)
    model.write_bytes(caffemodel(wt))
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    with trt.CaffeParser() as parser:
        blobs = parser.parse(deploy=str(deploy), model=str(model), network=network, dtype=trt.float32)
        with pytest.raises(AttributeError):
            parser.no_such_setting = 1
    assert blobs.find("no_such_blob") is None
    network.mark_output(blobs.find("prob"))
    config = builder.create_builder_config()
    config.device = "cpu"
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    x = rand(rng, 2, 1, 28, 28)
    assert_close(engine.run({"data": x})["prob"], lenet_reference(x, wt), rtol=1e-4, atol=1e-5)


def test_cli_exec_deploy(tmp_path, capsys):
    from kilnrt.cli.main import main

    rng = np.random.default_rng(5)
    deploy, model, plan = tmp_path / "deploy.prototxt", tmp_path / "lenet.caffemodel", tmp_path / "lenet.plan"
    deploy.write_text(LENET)
    wt = lenet_weights(rng)
    model.write_bytes(caffemodel(wt))
    rc = main(["exec", f"--deploy={deploy}", f"--model={model}", "--output=prob", f"--saveEngine={plan}",
               "--device=cpu", "--skipInference"])
    assert rc == 0 and "&&&& PASSED" in capsys.readouterr().out
    engine = kilnrt.load(str(plan))
    x = rand(rng, 2, 1, 28, 28)
    assert_close(engine.run({"data": x})["prob"], lenet_reference(x, wt), rtol=1e-4, atol=1e-5)
    assert main(["exec", f"--model={model}", "--device=cpu"]) != 0      # --model without --deploy


def test_build_points_a_prototxt_to_caffe_parse(tmp_path):
    with pytest.raises(KilnError, match=r"kilnrt\.caffe\.parse"):
        kilnrt.build(str(tmp_path / "deploy.prototxt"))


# ----------------------------------------------------------------------------- errors
def test_unknown_layer_type_names_the_layer_and_the_supported_types():
    text = LENET.replace('name: "prob" type: "Softmax"', 'name: "prob" type: "Crop"')
    with pytest.raises(KilnError, match=r"Crop \(prob\).*Supported: .*Convolution"):
        parse(text, caffemodel(lenet_weights(np.random.default_rng(0))))


def test_unsupported_parameters_and_missing_weights_raise():
    wt = lenet_weights(np.random.default_rng(0))
    with pytest.raises(KilnError, match=r"layer 'pool1': Caffe Pooling layer: pool STOCHASTIC"):
        parse(LENET.replace("pool: MAX kernel_size: 2", "pool: STOCHASTIC kernel_size: 2"), caffemodel(wt))
    with pytest.raises(KilnError, match=r"layer 'pool1': .*would hold no input cell"):
        parse(LENET.replace("kernel_size: 2 stride: 2", "kernel_size: 1 stride: 5"), caffemodel(wt))
    wt["ip1"] = wt["ip1"][:1]
    with pytest.raises(KilnError, match=r"layer 'ip1': Caffe InnerProduct layer: needs 2 weight blob"):
        parse(LENET, caffemodel(wt))


def test_batch_statistics_and_unknown_fields_raise():
    text = BLOCK.replace("use_global_stats: true", "use_global_stats: false")
    with pytest.raises(KilnError, match=r"layer 'bn': Caffe BatchNorm layer: use_global_stats: false"):
        parse(text, caffemodel(block_weights(np.random.default_rng(0))))
    with pytest.raises(KilnError, match="not a Caffe prototxt"):
        parse(LENET.replace("engine: CAFFE", "fancy_option: 3"))


def test_parameters_of_unsupported_layer_types_name_those_layers():
    """Layer types kilnrt does not support carry parameter messages its schema lacks (Crop's
    crop_param, Slice's slice_param): the error names the layers and their types, not just the
    first unknown field."""
    text = LENET.replace('layer { name: "pool1"', """
layer { name: "crop" type: "Crop" bottom: "conv1" bottom: "data" top: "crop" crop_param { axis: 2 offset: 1 } }
layer { name: "slice" type: "Slice" bottom: "crop" top: "s1" top: "s2" slice_param { axis: 1 slice_point: 2 } }
layer { name: "slice2" type: "Slice" bottom: "s1" top: "s3" top: "s4" slice_param { axis: 1 slice_point: 1 } }
layer { name: "pool1\"""")
    with pytest.raises(KilnError) as info:
        parse(text)
    message = str(info.value)
    assert info.value.code == "UNSUPPORTED_NODE"
    assert "Crop (crop), Slice (2 layers: slice, slice2). Supported: " in message
    assert "Normalize" in message and "DetectionOutput" in message       # SSD Caffe's are supported
    assert 'no field named "crop_param"' in message and ".." not in message
    # a field a supported layer lacks still says where the prototxt stops parsing
    with pytest.raises(KilnError, match=r"\[INVALID_MODEL\] <text>: not a Caffe prototxt .*7:95 .*fancy_option"):
        parse(LENET.replace("engine: CAFFE", "fancy_option: 3"))


def test_nvidia_caffe_raw_data_blobs():
    """NVIDIA Caffe's raw storage (raw_data_type + raw_data bytes), in which OpenCV's fp16 models
    keep their weights: FLOAT16, FLOAT and DOUBLE read as float32; INT is refused."""
    rng = np.random.default_rng(6)
    wt = lenet_weights(rng)
    kinds = {"conv1": ("FLOAT16", "<f2"), "conv2": ("FLOAT", "<f4"), "ip1": ("DOUBLE", "<f8")}
    net = schema.NetParameter.FromString(caffemodel(wt))
    types = schema.BlobProto.DESCRIPTOR.fields_by_name["raw_data_type"].enum_type.values_by_name
    for layer in net.layer:
        if layer.name in kinds:
            kind, dtype = kinds[layer.name]
            for blob, a in zip(layer.blobs, wt[layer.name]):
                del blob.data[:]
                blob.raw_data_type = types[kind].number
                blob.raw_data = a.astype(dtype).tobytes()
    wt["conv1"] = [a.astype(np.float16).astype(np.float32) for a in wt["conv1"]]
    x = rand(rng, 2, 1, 28, 28)
    got = run(parse(LENET, net.SerializeToString(), ["prob"]), {"data": x})["prob"]
    assert_close(got, lenet_reference(x, wt), rtol=1e-4, atol=1e-5)
    blob = net.layer[0].blobs[0]
    assert (schema.BlobProto.DESCRIPTOR.fields_by_name["raw_data_type"].number,
            schema.BlobProto.DESCRIPTOR.fields_by_name["raw_data"].number) == (10, 12)   # as NVIDIA's caffe.proto
    blob.raw_data_type = types["INT"].number
    with pytest.raises(KilnError, match=r"layer 'conv1': a weight blob stores raw_data of type INT"):
        parse(LENET, net.SerializeToString())
    blob.raw_data_type, blob.raw_data = types["FLOAT"].number, b"\0" * 6
    with pytest.raises(KilnError, match=r"layer 'conv1': .*holds 6 bytes, not a whole number of values"):
        parse(LENET, net.SerializeToString())


# ----------------------------------------------------------------------------- SSD Caffe's layers
# The references follow SSD Caffe's forward passes (github.com/weiliu89/caffe, branch ssd:
# normalize_layer.cpp, permute_layer.cpp, prior_box_layer.cpp, detection_output_layer.cpp and
# bbox_util.cpp) in float64 numpy, loop by loop, apart from kilnrt's converters.
def ref_normalize(x, scale, across_spatial, eps):
    x = x.astype(np.float64)
    axes = tuple(range(1, x.ndim)) if across_spatial else (1,)
    norm = np.sqrt((x * x).sum(axes, keepdims=True) + eps)
    return x / norm * np.asarray(scale, np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))


@pytest.mark.parametrize("across_spatial", [False, True])
@pytest.mark.parametrize("channel_shared", [False, True])
def test_normalize(across_spatial, channel_shared):
    rng = np.random.default_rng(10)
    eps = 0.5        # large enough to matter: the sums are about 2 per position
    text = f"""input: "x" input_shape {{ dim: 2 dim: 6 dim: 3 dim: 4 }}
    layer {{ name: "norm" type: "Normalize" bottom: "x" top: "norm"
      norm_param {{ across_spatial: {str(across_spatial).lower()} channel_shared: {str(channel_shared).lower()}
                   eps: {eps} scale_filler {{ type: "constant" value: 20 }} }} }}"""
    scale = rand(rng, 1 if channel_shared else 6, lo=5, hi=25)
    x = rand(rng, 2, 6, 3, 4)
    got = run(parse(text, caffemodel({"norm": [scale.reshape(()) if channel_shared else scale]})), {"x": x})["norm"]
    assert_close(got, ref_normalize(x, scale, across_spatial, eps), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order,full", [((0, 2, 3, 1), (0, 2, 3, 1)), ((0, 3), (0, 3, 1, 2)),
                                        ((3, 1, 0, 2), (3, 1, 0, 2)), ((), (0, 1, 2, 3))])
def test_permute(order, full):
    """Caffe appends the axes that ``order`` does not name, in their order."""
    text = 'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n' \
           'layer { name: "perm" type: "Permute" bottom: "x" top: "perm" permute_param { ' + \
           " ".join(f"order: {o}" for o in order) + " } }"
    x = rand(np.random.default_rng(11), 2, 3, 4, 5)
    got = run(parse(text), {"x": x})["perm"]
    assert got.shape == tuple(x.shape[a] for a in full)
    np.testing.assert_array_equal(got, np.transpose(x, full))
    for bad in ("order: 4", "order: 1 order: 1"):
        with pytest.raises(KilnError, match=r"layer 'perm': Caffe Permute layer: order .* distinct axes"):
            parse(text.replace("permute_param {", f"permute_param {{ {bad}"))


def ref_prior_box(feature_hw, image_hw, min_size, max_size=(), aspect_ratio=(), flip=True, clip=False,
                  variance=(0.1,), step=None, offset=0.5, img_size=None):
    layer_h, layer_w = feature_hw
    img_h, img_w = (img_size, img_size) if img_size else image_hw
    step_h, step_w = (step, step) if step else (img_h / layer_h, img_w / layer_w)
    ratios = [1.0]
    for r in aspect_ratio:
        if all(abs(r - q) >= 1e-6 for q in ratios):
            ratios.append(r)
            if flip:
                ratios.append(1.0 / r)
    boxes = []
    for h in range(layer_h):
        for w in range(layer_w):
            cx, cy = (w + offset) * step_w, (h + offset) * step_h
            for s, mn in enumerate(min_size):
                mn = int(mn)
                sizes = [(mn, mn)]
                if max_size:
                    sizes.append((math.sqrt(mn * int(max_size[s])),) * 2)
                sizes += [(mn * math.sqrt(r), mn / math.sqrt(r)) for r in ratios if abs(r - 1) >= 1e-6]
                for bw, bh in sizes:
                    boxes.append([(cx - bw / 2) / img_w, (cy - bh / 2) / img_h,
                                  (cx + bw / 2) / img_w, (cy + bh / 2) / img_h])
    boxes = np.array(boxes, np.float64).ravel()
    if clip:
        boxes = np.clip(boxes, 0, 1)
    variances = np.tile(variance if len(variance) == 4 else variance * 4, len(boxes) // 4)
    return np.stack([boxes, variances])[None]


PRIOR_BOX_CASES = {      # prior_box_param text -> the reference's arguments
    "min_size: 6": dict(min_size=[6]),
    "min_size: 6 max_size: 14 aspect_ratio: 2 flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 "
    "variance: 0.2 step: 8 offset: 0.5": dict(min_size=[6], max_size=[14], aspect_ratio=[2], variance=(0.1, 0.1, 0.2, 0.2),
                                              step=8),
    "min_size: 9.7 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 0.5 flip: false clip: true variance: 0.2 offset: 0.3":
        dict(min_size=[9.7], aspect_ratio=[2, 3, 0.5], flip=False, clip=True, variance=(0.2,), offset=0.3),
    "min_size: 4 min_size: 12 max_size: 10 max_size: 20 aspect_ratio: 3 aspect_ratio: 0.3333333 clip: true img_size: 32":
        dict(min_size=[4, 12], max_size=[10, 20], aspect_ratio=[3, 0.3333333], clip=True, img_size=32),
}


@pytest.mark.parametrize("param", list(PRIOR_BOX_CASES))
def test_prior_box(param):
    """A constant from the shapes of its bottoms: the image here is a net input, the feature
    map a convolution's output (5 x 7 of 40 x 56)."""
    text = f"""input: "data" input_shape {{ dim: 1 dim: 3 dim: 40 dim: 56 }}
    layer {{ name: "conv" type: "Convolution" bottom: "data" top: "feat"
      convolution_param {{ num_output: 2 kernel_size: 8 stride: 8 }} }}
    layer {{ name: "prior" type: "PriorBox" bottom: "feat" bottom: "data" top: "prior" prior_box_param {{ {param} }} }}"""
    rng = np.random.default_rng(12)
    network = parse(text, caffemodel({"conv": [rand(rng, 2, 3, 8, 8), rand(rng, 2)]}), ["prior"])
    got = run(network, {"data": rand(rng, 1, 3, 40, 56)})["prior"]
    want = ref_prior_box((5, 7), (40, 56), **PRIOR_BOX_CASES[param])
    assert got.shape == want.shape
    assert_close(got, want, rtol=0, atol=1e-6)


def test_prior_box_errors():
    text = """input: "data" input_shape { dim: 1 dim: 3 dim: -1 dim: 64 }
    layer { name: "prior" type: "PriorBox" bottom: "data" bottom: "data" top: "prior" prior_box_param { min_size: 4 } }"""
    with pytest.raises(KilnError, match=r"layer 'prior': Caffe PriorBox layer: the height and width of the first "
                                        r"\(feature map\) bottom 'data' are not static \(\(1, 3, -1, 64\)\)"):
        parse(text)
    fixed = text.replace("dim: -1", "dim: 64")
    for param, message in (("max_size: 2.5", r"max_size \[2.5\] must give one size above each min_size \[4\]"),
                           ("variance: 0.1 variance: 0.2", r"variance takes 1 or 4 positive values, got \[0.1, 0.2\]"),
                           ("step: 4 step_h: 2", "either step or step_h/step_w")):
        with pytest.raises(KilnError, match=message):
            parse(fixed.replace("min_size: 4", f"min_size: 4 {param}"))
    with pytest.raises(KilnError, match="min_size is required"):
        parse(fixed.replace("min_size: 4", ""))


def ref_overlap(a, b):
    """bbox_util.cpp's JaccardOverlap of normalized boxes (a box with max < min has size 0)."""
    w, h = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    size = lambda r: 0.0 if r[2] < r[0] or r[3] < r[1] else (r[2] - r[0]) * (r[3] - r[1])
    return w * h / (size(a) + size(b) - w * h)


def ref_detection_output(loc, conf, prior, num_classes, share_location=True, background_label_id=0,
                         code_type="CORNER", variance_encoded_in_target=False, nms_threshold=0.3, top_k=-1,
                         keep_top_k=-1, confidence_threshold=None):
    """[N, 7] rows (image, label, confidence, xmin, ymin, xmax, ymax), by descending confidence."""
    count = prior.shape[2] // 4
    priors = prior[0, 0].reshape(count, 4).astype(np.float64)
    variances = prior[0, 1].reshape(count, 4).astype(np.float64) if not variance_encoded_in_target else None
    deltas = loc.reshape(count, 1 if share_location else num_classes, 4).astype(np.float64)
    scores = conf.reshape(count, num_classes).astype(np.float64)

    def decode(p, v, d):
        if v is not None:
            d = d * v
        if code_type == "CORNER":
            return p + d
        pw, ph = p[2] - p[0], p[3] - p[1]
        cx, cy = d[0] * pw + (p[0] + p[2]) / 2, d[1] * ph + (p[1] + p[3]) / 2
        w, h = math.exp(d[2]) * pw, math.exp(d[3]) * ph
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])

    found = []
    for c in range(num_classes):
        if c == background_label_id:
            continue
        boxes = [decode(priors[i], None if variances is None else variances[i],
                        deltas[i, 0 if share_location else c]) for i in range(count)]
        s = scores[:, c]
        order = sorted((i for i in range(count) if confidence_threshold is None or s[i] > confidence_threshold),
                       key=lambda i: -s[i])                                  # stable, as std::stable_sort
        if top_k > -1:
            order = order[:top_k]
        kept = []
        for i in order:
            if all(ref_overlap(boxes[i], boxes[j]) <= nms_threshold for j in kept):
                kept.append(i)
        found += [[0, c, s[i], *boxes[i]] for i in kept]
    found.sort(key=lambda row: -row[2])
    if keep_top_k > -1:
        found = found[:keep_top_k]
    return np.array(found, np.float64).reshape(-1, 7)


def ssd_inputs(rng, count, classes, loc_classes, variance_rows=2):
    """Priors scattered over the image (many overlap), small location deltas, softmax scores."""
    centers, sizes = rng.uniform(0.25, 0.75, (count, 2)), rng.uniform(0.2, 0.45, (count, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).reshape(-1)
    variances = np.tile([0.1, 0.1, 0.2, 0.2], count)
    prior = np.stack([boxes, variances][:variance_rows])[None].astype(np.float32)
    loc = rng.normal(0, 0.5, (1, count * loc_classes * 4)).astype(np.float32)
    logits = rng.normal(0, 1.5, (count, classes))
    conf = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).reshape(1, -1).astype(np.float32)
    return loc, conf, prior


DETECTION_CASES = {      # detection_output_param text -> the reference's arguments (num_classes 3 unless said)
    "share_location: true background_label_id: 0 code_type: CENTER_SIZE confidence_threshold: 0.05 "
    "nms_param { nms_threshold: 0.45 top_k: 20 } keep_top_k: 15":
        dict(code_type="CENTER_SIZE", confidence_threshold=0.05, nms_threshold=0.45, top_k=20, keep_top_k=15),
    "share_location: false background_label_id: -1 code_type: CORNER confidence_threshold: 0.3 "
    "nms_param { nms_threshold: 0.3 }":
        dict(share_location=False, background_label_id=-1, confidence_threshold=0.3, nms_threshold=0.3),
    "background_label_id: 1 code_type: CENTER_SIZE variance_encoded_in_target: true confidence_threshold: 0.4 "
    "nms_param { nms_threshold: 0.5 top_k: 8 } keep_top_k: 100":
        dict(background_label_id=1, code_type="CENTER_SIZE", variance_encoded_in_target=True,
             confidence_threshold=0.4, nms_threshold=0.5, top_k=8, keep_top_k=100),
    "share_location: false code_type: CENTER_SIZE confidence_threshold: 0.1 nms_param { nms_threshold: 0.4 top_k: 25 } "
    "keep_top_k: 12 save_output_param { label_map_file: 'labels.prototxt' }":
        dict(share_location=False, code_type="CENTER_SIZE", confidence_threshold=0.1, nms_threshold=0.4,
             top_k=25, keep_top_k=12),
}


def detection_net(param: str, count: int, classes: int, loc_classes: int, variance_rows: int = 2) -> str:
    return f"""input: "loc" input_shape {{ dim: 1 dim: {count * loc_classes * 4} }}
    input: "conf" input_shape {{ dim: 1 dim: {count * classes} }}
    input: "prior" input_shape {{ dim: 1 dim: {variance_rows} dim: {count * 4} }}
    layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "det"
      include {{ phase: TEST }} detection_output_param {{ num_classes: {classes} {param} }} }}"""


def by_confidence(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort((rows[:, 3], -rows[:, 2]))]


@pytest.mark.parametrize("param", list(DETECTION_CASES))
def test_detection_output(param):
    args = DETECTION_CASES[param]
    count, classes = 60, 3
    loc_classes = 1 if args.get("share_location", True) else classes
    rows = 1 if args.get("variance_encoded_in_target") else 2
    rng = np.random.default_rng(13)
    engine = kilnrt.build(parse(detection_net(param, count, classes, loc_classes, rows)), device="cpu")
    for _ in range(3):
        loc, conf, prior = ssd_inputs(rng, count, classes, loc_classes, rows)
        if rows == 1:
            loc *= 0.2               # targets with the variances in them
        got = engine.run({"loc": loc, "conf": conf, "prior": prior})["det"]
        want = ref_detection_output(loc, conf, prior, classes, **args)
        assert got.shape[:2] == (1, 1) and got.shape[3] == 7
        assert got.shape[2] == len(want) and len(want) > 3, (got.shape, len(want))
        assert np.all(np.diff(got[0, 0, :, 2]) <= 0)                # by descending confidence
        assert_close(by_confidence(got[0, 0]), by_confidence(want), rtol=0, atol=1e-5)


def test_detection_output_finds_nothing_and_refuses_what_it_does_not_do():
    count, classes = 10, 2
    param = "code_type: CENTER_SIZE confidence_threshold: 0.999 nms_param { nms_threshold: 0.45 }"
    loc, conf, prior = ssd_inputs(np.random.default_rng(14), count, classes, 1)
    got = run(parse(detection_net(param, count, classes, 1)), {"loc": loc, "conf": conf, "prior": prior})["det"]
    assert got.shape == (1, 1, 0, 7)          # Caffe writes one row of -1 instead
    base = detection_net(param, count, classes, 1)
    for text, message in (
            (base.replace("CENTER_SIZE", "CORNER_SIZE"), "code_type CORNER_SIZE is not supported"),
            (base.replace("nms_threshold: 0.45", "nms_threshold: 0.45 eta: 0.9"), r"adaptive NMS \(eta 0.9"),
            (base.replace("num_classes: 2", "num_classes: 3"), r"the confidence bottom has shape \(1, 20\); 10 priors "
                                                               "and 3 classes need 30 values"),
            (base.replace("dim: 1 dim: 40", "dim: 2 dim: 40").replace("dim: 1 dim: 20", "dim: 2 dim: 20"),
             "kilnrt detects in one image per run; the bottoms have batch 2")):
        with pytest.raises(KilnError, match=r"layer 'det': Caffe DetectionOutput layer: " + message):
            parse(text)


# ----------------------------------------------------------------------------- the schema
# (message, field) -> number, as read in BVLC Caffe's src/caffe/proto/caffe.proto
CAFFE_PROTO_NUMBERS = {
    ("NetParameter", "name"): 1, ("NetParameter", "input"): 3, ("NetParameter", "input_shape"): 8,
    ("NetParameter", "input_dim"): 4, ("NetParameter", "layer"): 100, ("NetParameter", "layers"): 2,
    ("BlobShape", "dim"): 1, ("BlobProto", "shape"): 7, ("BlobProto", "data"): 5, ("BlobProto", "double_data"): 8,
    ("BlobProto", "num"): 1, ("BlobProto", "channels"): 2, ("BlobProto", "height"): 3, ("BlobProto", "width"): 4,
    ("LayerParameter", "name"): 1, ("LayerParameter", "type"): 2, ("LayerParameter", "bottom"): 3,
    ("LayerParameter", "top"): 4, ("LayerParameter", "blobs"): 7, ("LayerParameter", "include"): 8,
    ("LayerParameter", "convolution_param"): 106, ("LayerParameter", "pooling_param"): 121,
    ("LayerParameter", "inner_product_param"): 117, ("LayerParameter", "batch_norm_param"): 139,
    ("LayerParameter", "scale_param"): 142, ("LayerParameter", "eltwise_param"): 110,
    ("LayerParameter", "concat_param"): 104, ("LayerParameter", "softmax_param"): 125,
    ("LayerParameter", "relu_param"): 123, ("LayerParameter", "input_param"): 143,
    ("LayerParameter", "reshape_param"): 133, ("LayerParameter", "prelu_param"): 131,
    ("LayerParameter", "lrn_param"): 118, ("LayerParameter", "power_param"): 122,
    ("LayerParameter", "flatten_param"): 135, ("LayerParameter", "dropout_param"): 108,
    ("ConvolutionParameter", "num_output"): 1, ("ConvolutionParameter", "bias_term"): 2,
    ("ConvolutionParameter", "pad"): 3, ("ConvolutionParameter", "kernel_size"): 4,
    ("ConvolutionParameter", "group"): 5, ("ConvolutionParameter", "stride"): 6,
    ("ConvolutionParameter", "pad_h"): 9, ("ConvolutionParameter", "kernel_h"): 11,
    ("ConvolutionParameter", "stride_w"): 14, ("ConvolutionParameter", "dilation"): 18,
    ("PoolingParameter", "pool"): 1, ("PoolingParameter", "kernel_size"): 2, ("PoolingParameter", "stride"): 3,
    ("PoolingParameter", "pad"): 4, ("PoolingParameter", "global_pooling"): 12, ("PoolingParameter", "round_mode"): 13,
    ("InnerProductParameter", "num_output"): 1, ("InnerProductParameter", "axis"): 5,
    ("InnerProductParameter", "transpose"): 6, ("BatchNormParameter", "use_global_stats"): 1,
    ("BatchNormParameter", "eps"): 3, ("ScaleParameter", "bias_term"): 4, ("EltwiseParameter", "operation"): 1,
    ("EltwiseParameter", "coeff"): 2, ("ConcatParameter", "axis"): 2, ("SoftmaxParameter", "axis"): 2,
    ("ReLUParameter", "negative_slope"): 1, ("InputParameter", "shape"): 1, ("ReshapeParameter", "shape"): 1,
    ("V1LayerParameter", "type"): 5, ("V1LayerParameter", "blobs"): 6, ("V1LayerParameter", "convolution_param"): 10,
}


# as read in SSD Caffe's caffe.proto (github.com/weiliu89/caffe, branch ssd), whose .caffemodel
# files carry them (tests/test_caffe_real_model.py reads OpenCV's res10 face detector's);
# OpenCV's opencv-caffe.proto numbers the four LayerParameter fields 147-150 instead
SSD_CAFFE_PROTO_NUMBERS = {
    ("LayerParameter", "detection_output_param"): 204, ("LayerParameter", "permute_param"): 202,
    ("LayerParameter", "prior_box_param"): 203, ("LayerParameter", "norm_param"): 206,
    ("NormalizeParameter", "across_spatial"): 1, ("NormalizeParameter", "scale_filler"): 2,
    ("NormalizeParameter", "channel_shared"): 3, ("NormalizeParameter", "eps"): 4, ("PermuteParameter", "order"): 1,
    ("PriorBoxParameter", "min_size"): 1, ("PriorBoxParameter", "max_size"): 2, ("PriorBoxParameter", "aspect_ratio"): 3,
    ("PriorBoxParameter", "flip"): 4, ("PriorBoxParameter", "clip"): 5, ("PriorBoxParameter", "variance"): 6,
    ("PriorBoxParameter", "img_size"): 7, ("PriorBoxParameter", "img_h"): 8, ("PriorBoxParameter", "img_w"): 9,
    ("PriorBoxParameter", "step"): 10, ("PriorBoxParameter", "step_h"): 11, ("PriorBoxParameter", "step_w"): 12,
    ("PriorBoxParameter", "offset"): 13, ("NonMaximumSuppressionParameter", "nms_threshold"): 1,
    ("NonMaximumSuppressionParameter", "top_k"): 2, ("NonMaximumSuppressionParameter", "eta"): 3,
    ("DetectionOutputParameter", "num_classes"): 1, ("DetectionOutputParameter", "share_location"): 2,
    ("DetectionOutputParameter", "background_label_id"): 3, ("DetectionOutputParameter", "nms_param"): 4,
    ("DetectionOutputParameter", "save_output_param"): 5, ("DetectionOutputParameter", "code_type"): 6,
    ("DetectionOutputParameter", "keep_top_k"): 7, ("DetectionOutputParameter", "variance_encoded_in_target"): 8,
    ("DetectionOutputParameter", "confidence_threshold"): 9,
}


def test_field_numbers_match_caffe_proto():
    numbers = {**CAFFE_PROTO_NUMBERS, **SSD_CAFFE_PROTO_NUMBERS}
    wrong = {key: schema.message_class(key[0]).DESCRIPTOR.fields_by_name[key[1]].number
             for key in numbers
             if schema.message_class(key[0]).DESCRIPTOR.fields_by_name[key[1]].number != numbers[key]}
    assert not wrong
    blob = schema.BlobProto()        # packed floats under field 5, as Caffe writes them
    blob.data.extend([1.0, 2.0])
    assert blob.SerializeToString() == bytes([0x2A, 8]) + np.array([1, 2], "<f4").tobytes()
    assert text_format.Parse('pool: AVE', schema.message_class("PoolingParameter")()).pool == 1


def test_cli_exec_deploy_calibrates_int8(tmp_path, capsys):
    """`kilnrt exec --deploy ... --int8 --calib=FOLDER`: the Caffe network's input names the
    batches; its convolutions and inner products run in INT8, close to the reference."""
    from kilnrt.cli.main import main
    from kilnrt.network.layers import LayerKind

    rng = np.random.default_rng(9)
    deploy, model, plan = tmp_path / "deploy.prototxt", tmp_path / "lenet.caffemodel", tmp_path / "lenet8.plan"
    deploy.write_text(LENET)
    wt = lenet_weights(rng)
    model.write_bytes(caffemodel(wt))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        np.save(calib / f"{i}.npy", rand(rng, 2, 1, 28, 28))
    rc = main(["exec", f"--deploy={deploy}", f"--model={model}", "--output=prob", f"--saveEngine={plan}",
               "--int8", f"--calib={calib}", "--device=cpu", "--skipInference"])
    assert rc == 0 and "&&&& PASSED" in capsys.readouterr().out
    engine = kilnrt.load(str(plan))
    assert sum(l.kind in (LayerKind.QUANTIZED_CONVOLUTION, LayerKind.QUANTIZED_MATRIX_MULTIPLY)
               for l in engine.layers) == 4
    x = rand(rng, 2, 1, 28, 28)
    ref = lenet_reference(x, wt)
    got = engine.run({"data": x})["prob"]
    assert np.abs(got - ref).max() < 0.05 and not np.allclose(got, ref, rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- files from Caffe's own schema
WRITE_WITH_CAFFE_SCHEMA = """
import os, sys, importlib.util
import numpy as np
from google.protobuf import text_format
spec = importlib.util.spec_from_file_location("caffe_pb2", sys.argv[1])
caffe_pb2 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(caffe_pb2)
deploy = caffe_pb2.NetParameter()
text_format.Merge(open(sys.argv[2]).read(), deploy)       # Caffe's schema accepts the deploy file
weights = np.load(sys.argv[3])
snapshot = caffe_pb2.NetParameter()
snapshot.CopyFrom(deploy)                                 # a snapshot: the net with blobs in its layers
for layer in snapshot.layer:
    for i in range(2):
        key = f"{layer.name}/{i}"
        if key in weights.files:
            a = weights[key]
            blob = layer.blobs.add()
            blob.shape.dim.extend(a.shape)
            blob.data.extend(a.astype(np.float32).ravel().tolist())
open(sys.argv[4], "wb").write(snapshot.SerializeToString())
open(sys.argv[5], "w").write(text_format.MessageToString(deploy))
"""


def test_lenet_written_by_caffes_own_schema_matches_the_reference(tmp_path):
    """The deploy file and the weights written with Caffe's generated caffe_pb2 (the copy MMdnn
    ships, not kilnrt's schema), parsed by kilnrt, against the independent reference."""
    import importlib.util
    import os
    import subprocess
    import sys

    spec = importlib.util.find_spec("mmdnn")
    if spec is None:
        pytest.skip("mmdnn (which ships Caffe's caffe_pb2) is not installed")
    pb2 = os.path.join(list(spec.submodule_search_locations)[0], "conversion", "caffe", "caffe_pb2.py")
    rng = np.random.default_rng(21)
    wt = lenet_weights(rng)
    np.savez(tmp_path / "w.npz", **{f"{k}/{i}": a for k, blobs in wt.items() for i, a in enumerate(blobs)})
    (tmp_path / "in.prototxt").write_text(LENET)
    script = tmp_path / "write.py"
    script.write_text(WRITE_WITH_CAFFE_SCHEMA)
    model, deploy = tmp_path / "lenet.caffemodel", tmp_path / "deploy.prototxt"
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")   # code generated by an old protoc
    subprocess.run([sys.executable, str(script), pb2, str(tmp_path / "in.prototxt"), str(tmp_path / "w.npz"),
                    str(model), str(deploy)], check=True, env=env, timeout=120)
    network = parse(str(deploy), str(model), ["prob"])
    x = rand(rng, 2, 1, 28, 28)
    assert_close(run(network, {"data": x})["prob"], lenet_reference(x, wt), rtol=1e-4, atol=1e-5)
