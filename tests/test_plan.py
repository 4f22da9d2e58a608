"""Plan files: round trips are exact, and every corrupt, truncated or foreign plan is
refused with a PlanError that says why, before anything runs.  Plans are data: loading
one never executes code from it."""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kilnrt
from kilnrt.engine import plan as planfile
from kilnrt.errors import ErrorCode, PlanError
from kilnrt.testing import seeded_inputs
from models import small_cnn_model

KILNRT = Path(kilnrt.__file__).parent


@pytest.fixture(scope="module")
def engine() -> kilnrt.Engine:
    return kilnrt.build(small_cnn_model())


class PlanBytes(bytes):
    """Plan bytes with a short repr (hypothesis prints its arguments on failure)."""

    def __repr__(self) -> str:
        return f"<plan of {len(self)} bytes>"


@pytest.fixture(scope="module")
def data(engine) -> bytes:
    return PlanBytes(engine.serialize())


def repack(data: bytes, edit) -> bytes:
    """The same plan with its header changed by ``edit(header)``, with a valid checksum."""
    header, weights, kernels = planfile.unpack(data)
    header = copy.deepcopy(header)
    edit(header)
    return planfile.pack(header, weights, kernels)


def load_error(data: bytes) -> PlanError:
    with pytest.raises(PlanError) as info:
        kilnrt.load(data)
    return info.value


# ----------------------------------------------------------------------------- round trips
def test_serialize_deserialize_gives_identical_outputs(engine, data):
    feeds = seeded_inputs(engine)
    expected = engine.run(feeds)
    again = kilnrt.Runtime().deserialize_cuda_engine(data)
    actual = again.run(feeds)
    for name in expected:
        assert np.array_equal(actual[name], expected[name]), f"{name}; seed {feeds.seed}"
    assert again.serialize() == data   # serializing is deterministic


def test_save_load_gives_identical_outputs(engine, tmp_path):
    path = tmp_path / "small.plan"
    engine.save(str(path))
    loaded = kilnrt.load(str(path))
    feeds = seeded_inputs(engine)
    expected = engine.run(feeds)
    actual = loaded.run(feeds)
    for name in expected:
        assert np.array_equal(actual[name], expected[name]), f"{name}; seed {feeds.seed}"
    with open(path, "rb") as f:               # a file object works too
        assert kilnrt.load(f).num_layers == engine.num_layers


def test_round_trip_keeps_io_profiles_and_memory_plan(tmp_path):
    engine = kilnrt.build(small_cnn_model("batch"), profiles={"x": ((1, 2, 6, 6), (3, 2, 6, 6), (8, 2, 6, 6))})
    loaded = kilnrt.load(engine.serialize())
    assert [(t.name, t.mode, t.dtype, t.shape, t.symbolic) for t in loaded.io] == \
        [(t.name, t.mode, t.dtype, t.shape, t.symbolic) for t in engine.io]
    assert loaded.get_tensor_profile_shape("x", 0) == [(1, 2, 6, 6), (3, 2, 6, 6), (8, 2, 6, 6)]
    assert loaded.memory is not None and loaded.memory.arena_bytes == engine.memory.arena_bytes
    assert [l.tactic for l in loaded.layers] == [l.tactic for l in engine.layers]
    x = seeded_inputs(engine, shapes={"x": (5, 2, 6, 6)})
    assert np.array_equal(loaded.run(x)["y"], engine.run(x)["y"])


def test_round_trip_keeps_output_formats():
    engine = kilnrt.build(small_cnn_model())
    assert all(l.output_formats == [None] * len(l.outputs) for l in engine.layers)   # CPU: nothing ran
    engine.layers[0].output_formats = ["channels_last"]
    engine.layers[-1].output_formats = ["linear"]
    loaded = kilnrt.load(engine.serialize())
    assert [l.output_formats for l in loaded.layers] == [l.output_formats for l in engine.layers]
    assert loaded.layers[0].output_formats == ["channels_last"]


def test_plan_without_output_formats_still_loads(data):
    def edit(h):
        for layer in h["layers"]:
            del layer["output_formats"]

    loaded = kilnrt.load(repack(data, edit))
    assert loaded.layers and all(l.output_formats == [] for l in loaded.layers)


# ----------------------------------------------------------------------------- refused plans
def test_missing_file_is_not_a_plan(tmp_path):
    with pytest.raises(PlanError) as info:
        kilnrt.load(str(tmp_path / "nope.plan"))
    assert info.value.code == ErrorCode.PLAN_NOT_A_PLAN
    assert "does not exist" in str(info.value) and "nope.plan" in str(info.value)


@pytest.mark.parametrize("blob", [b"", b"\x00" * 64, b"PK\x03\x04 a zip file", b"KILNPLA"])
def test_wrong_magic_is_not_a_plan(blob):
    err = load_error(blob)
    assert err.code == ErrorCode.PLAN_NOT_A_PLAN
    assert "not a kilnrt plan" in str(err) and "KILNPLAN" in str(err)


def test_onnx_file_is_not_a_plan(data):
    err = load_error(small_cnn_model().SerializeToString())
    assert err.code == ErrorCode.PLAN_NOT_A_PLAN


@pytest.mark.parametrize("keep", [8, 20, 36, 100, -33, -1])
def test_truncated_plan(data, keep):
    err = load_error(data[:keep])
    assert err.code == ErrorCode.PLAN_TRUNCATED
    assert "truncated" in str(err)
    assert str(len(data[:keep])) in str(err)       # says how many bytes it got


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_truncation_is_refused(data, hdata):
    keep = hdata.draw(st.integers(8, len(data) - 1), label="keep")
    err = load_error(data[:keep])
    assert err.code == ErrorCode.PLAN_TRUNCATED


def test_trailing_bytes_are_corrupt(data):
    err = load_error(data + b"\x00")
    assert err.code == ErrorCode.PLAN_CORRUPT
    assert "trailing" in str(err)


@pytest.mark.parametrize("where", ["header", "weights", "checksum"])
def test_flipped_byte_is_corrupt(data, where):
    h, w, _ = planfile._PREFIX.unpack_from(data)[2:]
    offset = {"header": planfile._PREFIX.size + h // 2, "weights": planfile._PREFIX.size + h + w // 2,
              "checksum": len(data) - 5}[where]
    bad = bytearray(data)
    bad[offset] ^= 0x01
    err = load_error(bytes(bad))
    assert err.code == ErrorCode.PLAN_CORRUPT
    assert "corrupt" in str(err) and "checksum" in str(err)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_single_byte_flip_raises_plan_error(data, hdata):
    """Anywhere in the file: a PlanError, never another exception; after the prefix: PLAN_CORRUPT."""
    offset = hdata.draw(st.integers(0, len(data) - 1), label="offset")
    mask = hdata.draw(st.integers(1, 255), label="xor mask")
    bad = bytearray(data)
    bad[offset] ^= mask
    err = load_error(bytes(bad))
    if offset >= planfile._PREFIX.size:
        assert err.code == ErrorCode.PLAN_CORRUPT, (offset, err)


def test_other_format_version(data):
    bad = bytearray(data)
    bad[8:12] = (planfile.FORMAT_VERSION + 1).to_bytes(4, "little")
    err = load_error(bytes(bad))
    assert err.code == ErrorCode.PLAN_VERSION
    assert f"format version {planfile.FORMAT_VERSION + 1}" in str(err)


def test_other_kilnrt_version(data):
    err = load_error(repack(data, lambda h: h.update(kilnrt_version="0.0.1")))
    assert err.code == ErrorCode.PLAN_VERSION
    text = str(err)
    assert "0.0.1" in text and kilnrt.__version__ in text and "rebuild" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_plan_for_a_gpu_on_a_machine_without_cuda(data):
    err = load_error(repack(data, lambda h: h.update(device="cuda", device_name="NVIDIA H100 80GB HBM3")))
    assert err.code == ErrorCode.PLAN_DEVICE
    text = str(err)
    assert "cuda" in text and "NVIDIA H100 80GB HBM3" in text and "no cuda device" in text


@pytest.mark.cuda
def test_plan_for_another_gpu_model(data):
    other = "NVIDIA Imaginary GPU 1GB"
    err = load_error(repack(data, lambda h: h.update(device="cuda", device_name=other)))
    assert err.code == ErrorCode.PLAN_DEVICE
    assert other in str(err) and torch.cuda.get_device_name() in str(err)


def test_unknown_tactic(data):
    def edit(h):
        h["layers"][0]["tactic"] = "cpu.convolution.from_the_future"

    err = load_error(repack(data, edit))
    assert err.code == ErrorCode.PLAN_UNKNOWN_TACTIC
    assert "cpu.convolution.from_the_future" in str(err) and "rebuild" in str(err)


SMUGGLED = {
    "enum from os": {"enum": "os", "name": "system"},
    "enum attribute": {"enum": "PaddingMode", "name": "__class__"},
    "builtins": {"enum": "builtins", "name": "eval"},
    "pickle-like": {"py/object": "os.system", "args": ["echo pwned"]},
    "reduce": {"__reduce__": ["os.system", ["echo pwned"]]},
    "missing weight": {"weight": "../../etc/passwd"},
    "bare list": ["os", "system"],
}


@pytest.mark.parametrize("value", list(SMUGGLED.values()), ids=list(SMUGGLED))
def test_params_that_smuggle_something_are_refused(data, value):
    def edit(h):
        h["layers"][0]["params"]["padding_mode"] = value

    err = load_error(repack(data, edit))
    assert err.code == ErrorCode.PLAN_CORRUPT


def test_unknown_params_field_is_refused(data):
    def edit(h):
        h["layers"][0]["params"]["__init__"] = "os.system"

    err = load_error(repack(data, edit))
    assert err.code == ErrorCode.PLAN_CORRUPT
    assert "__init__" in str(err) and "unknown fields" in str(err)


@pytest.mark.parametrize("edit", [
    lambda h: h["layers"][0].update(kind="os.system"),
    lambda h: h["io"][0].update(dtype="__class__"),
    lambda h: h.pop("layers"),
    lambda h: h["layers"][0].pop("params"),
    lambda h: h.update(constants=["not a weight"]),
    lambda h: h["layers"][0].update(output_formats=["hwc8"]),
], ids=["layer kind", "io dtype", "no layers", "no params", "missing constant", "output format"])
def test_malformed_header_is_corrupt(data, edit):
    err = load_error(repack(data, edit))
    assert err.code == ErrorCode.PLAN_CORRUPT


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_header_value_replaced_loads_or_raises_plan_error(data, hdata):
    """A well-formed container whose header holds anything at one place: loading either
    works or raises PlanError (never an AttributeError, TypeError... from deep inside)."""
    header, weights, kernels = planfile.unpack(data)
    node, path = header, []
    while isinstance(node, (dict, list)) and node and hdata.draw(st.booleans(), label="descend"):
        key = hdata.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    value = hdata.draw(JSON, label="value")
    header = copy.deepcopy(header)
    if not path:
        header = value
    else:
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    blob = planfile.pack(header, weights, kernels)
    try:
        kilnrt.load(blob)
    except PlanError:
        pass


# ----------------------------------------------------------------------------- plans are data
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "importlib", "runpy"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def forbidden_uses(source: str) -> list[tuple[int, str]]:
    """Code (not comments or docstrings) that could execute what a plan contains."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"import {n}") for n in names if n.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in FORBIDDEN_CALLS:
                found.append((node.lineno, f"{f.id}()"))
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "torch" \
                    and f.attr == "load":
                found.append((node.lineno, "torch.load() (unpickles)"))
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append((node.lineno, "allow_pickle"))
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_MODULES:
            found.append((node.lineno, node.id))
    return found


def test_forbidden_uses_are_detected():
    bad = "import pickle\nfrom importlib import import_module\nx = eval('1')\ntorch.load(f)\nnp.load(f, allow_pickle=True)\n"
    assert [what for _, what in forbidden_uses(bad)] == \
        ["import pickle", "import importlib", "eval()", "torch.load() (unpickles)", "allow_pickle"]
    assert forbidden_uses('"""without pickle or eval(...)"""\n# exec(x)\nre.compile("a")\n') == []


def test_engine_package_never_executes_plan_contents():
    files = sorted((KILNRT / "engine").glob("*.py"))
    assert files
    found = [f"{path.relative_to(KILNRT.parent)}:{line}: {what}"
             for path in files for line, what in forbidden_uses(path.read_text())]
    assert not found, "\n".join(found)


def test_plan_header_is_plain_json(data):
    header, _, _ = planfile.unpack(data)
    assert json.loads(json.dumps(header)) == header
    assert header["kilnrt_version"] == kilnrt.__version__ and header["device"] == "cpu"


def test_loaded_layers_know_their_input_types_and_shapes(tmp_path):
    """Tactics prepare from the plan alone: each layer's inputs keep their dtypes and shapes."""
    from models import chain_model

    engine = kilnrt.build(chain_model())
    loaded = kilnrt.load(engine.serialize())
    for before, after in zip(engine.layers, loaded.layers):
        view = after.as_network_layer()
        assert [t.dtype if t is not None else None for t in view.inputs] == \
            [kilnrt.DataType[d] if d else None for d in before.input_dtypes]
        assert all(t is None or t.dtype is not None for t in view.inputs)
