"""Plans from strangers and bad bindings: a plan whose I/O table understates an output cannot
make a pointer-bound run write past the buffer; NULL pointers, negative and overflowing
shapes are refused; deeply nested plan JSON is a PlanError, not a RecursionError."""
from __future__ import annotations

import json

import numpy as np
import pytest

import kilnrt
from kilnrt.engine.plan import pack, unpack
from kilnrt.errors import ExecutionError, PlanError, ShapeError
from models import small_cnn_model

RNG = np.random.default_rng()


def tampered(engine, edit) -> kilnrt.Engine:
    header, weights, kernels = unpack(engine.serialize())
    edit(header)
    return kilnrt.Engine.deserialize(pack(header, weights, kernels))   # the checksum is recomputed


def understate_output(header) -> None:
    for t in header["io"]:
        if t["name"] == "y":
            t["shape"] = t["symbolic"] = [1, 5]
    header["tensors"]["y"]["dims"] = [1, 5]


def understate_output_everywhere(header) -> None:
    """The I/O table and the producing layer's record agree on the understated shape: only a run
    can tell."""
    understate_output(header)
    for layer in header["layers"]:
        if "y" in layer["outputs"]:
            layer["output_shapes"][layer["outputs"].index("y")] = [1, 5]


def test_an_io_table_that_disagrees_with_its_layers_is_refused_at_load():
    with pytest.raises(PlanError, match=r"I/O table gives output 'y' shape \(1, 5\), but layer .* records \(2, 5\)"):
        tampered(kilnrt.build(small_cnn_model(2)), understate_output)


def test_an_understated_output_is_not_written_past_its_pointer_buffer():
    engine = tampered(kilnrt.build(small_cnn_model(2)), understate_output_everywhere)
    ctx = engine.create_execution_context()
    assert ctx.get_tensor_shape("y") == (1, 5)            # what the user allocates from
    x = RNG.standard_normal((2, 2, 6, 6)).astype(np.float32)
    guarded = np.full(10 + 16, 7.0, np.float32)            # 5 floats for y, then guard values
    with pytest.raises(ExecutionError, match=r"output 'y' came out with shape \(2, 5\), larger than the \(1, 5\)"):
        ctx.execute_v2([x.ctypes.data, guarded.ctypes.data])
    assert np.all(guarded == 7.0)                         # nothing written, the guard bytes intact


def test_pointer_bound_outputs_of_an_honest_plan_are_written():
    engine = kilnrt.build(small_cnn_model(2))
    ctx = engine.create_execution_context()
    x = RNG.standard_normal((2, 2, 6, 6)).astype(np.float32)
    y = np.zeros(ctx.get_tensor_shape("y"), np.float32)
    assert ctx.execute_v2([x.ctypes.data, y.ctypes.data])
    np.testing.assert_allclose(y, engine.run({"x": x})["y"], rtol=1e-6)


@pytest.mark.parametrize("pointer", [0, -8])
def test_null_and_negative_pointers_are_refused(pointer):
    ctx = kilnrt.build(small_cnn_model(2)).create_execution_context()
    y = np.zeros((2, 5), np.float32)
    with pytest.raises(ExecutionError, match="bound to the pointer"):
        ctx.execute_v2([pointer, y.ctypes.data])


@pytest.mark.parametrize("shape, message", [((-1, 2, 6, 6), "negative dim"), ((-3, 2, 6, 6), "negative dim"),
                                            ((1 << 40, 2, 1 << 20, 6), "more than 2\\^62")])
def test_negative_and_overflowing_shapes_are_refused(shape, message):
    engine = kilnrt.build(small_cnn_model("batch"), profiles={"x": [(1, 2, 6, 6), (2, 2, 6, 6), (4, 2, 6, 6)]})
    with pytest.raises(ShapeError, match=message):
        engine.create_execution_context().set_input_shape("x", shape)


@pytest.mark.parametrize("where", ["header", "kernels"])
def test_deeply_nested_plan_json_is_a_plan_error(where):
    engine = kilnrt.build(small_cnn_model(2))
    header, weights, kernels = unpack(engine.serialize())
    deep = "[" * 100_000 + "]" * 100_000
    if where == "header":
        data = pack(header, weights, kernels)
        raw = json.dumps(header, sort_keys=True)
        data = _repack_raw(data, raw[:-1] + ', "x": ' + deep + "}", None)
    else:
        data = _repack_raw(pack(header, weights, kernels), None, '{"k": ' + deep + "}")
    with pytest.raises(PlanError, match="nested"):
        kilnrt.Engine.deserialize(data)


def _repack_raw(data: bytes, header_text: str | None, kernels_text: str | None) -> bytes:
    """The plan with its header or kernels section replaced by raw JSON text (checksum recomputed)."""
    import hashlib
    import struct

    from kilnrt.engine import plan as planfile

    prefix = struct.Struct("<8sIQQQ")
    magic, version, h, w, k = prefix.unpack_from(data)
    off = prefix.size
    head, weights, kern = data[off:off + h], data[off + h:off + h + w], data[off + h + w:off + h + w + k]
    head = header_text.encode() if header_text is not None else head
    kern = kernels_text.encode() if kernels_text is not None else kern
    body = prefix.pack(magic, version, len(head), len(weights), len(kern)) + head + weights + kern
    assert planfile.MAGIC == magic
    return body + hashlib.sha256(body).digest()


def test_params_of_the_wrong_type_are_refused_at_load():
    """Every params field is checked against its annotation: 450 nested tuples where the
    convolution's strides go, a string for its group count, a float for an int."""
    engine = kilnrt.build(small_cnn_model(2))
    header, weights, kernels = unpack(engine.serialize())
    deep: object = 1
    for _ in range(450):
        deep = {"tuple": [deep]}
    for field, value, expected in (("stride_nd", deep, r"tuple\[int, \.\.\.\]"), ("num_groups", "1", "int"),
                                   ("num_output_maps", 4.5, "int")):
        h = json.loads(json.dumps(header)) if field != "stride_nd" else header
        original = h["layers"][0]["params"][field]
        h["layers"][0]["params"][field] = value
        with pytest.raises(PlanError, match=f"convolution params: field '{field}' is .*not a {expected}"):
            kilnrt.Engine.deserialize(pack(h, weights, kernels))
        h["layers"][0]["params"][field] = original


def test_inspector_shows_plan_names_without_escape_sequences_or_markup():
    from rich.console import Console

    from kilnrt.engine.inspector import layer_table

    engine = kilnrt.build(small_cnn_model(2))
    engine.layers[0].name = "evil\x1b[2J[bold red]name[/]"
    engine.name = "plan\x1b]0;title\x07"
    console = Console(record=True, width=400, color_system=None)
    console.print(layer_table(engine))
    text = console.export_text()
    assert "\x1b" not in text and "\x07" not in text
    assert "evil\\x1b[2J[bold red]name[/]" in text and "plan\\x1b]0;title\\x07" in text


def test_signed_plans_load_only_with_their_key(tmp_path):
    engine = kilnrt.build(small_cnn_model(2))
    key = b"a key of sixteen bytes or more"
    path = tmp_path / "signed.plan"
    engine.save(str(path), key=key)
    x = RNG.standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(kilnrt.load(str(path), key=key).run({"x": x})["y"], engine.run({"x": x})["y"])
    assert kilnrt.load(str(path)).num_layers == engine.num_layers          # no key asked: the signature is skipped
    with pytest.raises(PlanError, match="signature does not match"):
        kilnrt.load(str(path), key=b"another key, also long enough")
    with pytest.raises(PlanError, match="not signed, but a key was given"):
        kilnrt.Engine.deserialize(engine.serialize(), key=key)
    # an edit with the checksum recomputed, the signature kept: refused
    data = path.read_bytes()
    header, weights, kernels = unpack(data[:-40])
    header["name"] = "edited"
    with pytest.raises(PlanError, match="signature does not match"):
        kilnrt.Engine.deserialize(pack(header, weights, kernels) + data[-40:], key=key)
    with pytest.raises(PlanError, match="at least 16 bytes"):
        engine.serialize(key="short")


def test_cli_signs_with_plan_key_and_requires_it(tmp_path, capsys):
    import onnx

    from kilnrt.cli.main import main

    model, key = tmp_path / "m.onnx", tmp_path / "key"
    onnx.save(small_cnn_model(2), model)
    key.write_bytes(b"sixteen-plus byte key\n")
    plan = tmp_path / "m.plan"
    assert main(["build", str(model), "-o", str(plan), "--plan-key", str(key)]) == 0
    assert main(["inspect", str(plan), "--plan-key", str(key)]) == 0
    other = tmp_path / "other"
    other.write_bytes(b"a different key, long enough")
    capsys.readouterr()
    assert main(["run", str(plan), "--plan-key", str(other)]) == 1
    assert "signature does not match" in capsys.readouterr().err


@pytest.mark.parametrize("op, attrs", [("Sign", {}), ("ArgMin", {"axis": 2}), ("ArgMin", {"axis": 3, "select_last_index": 1}),
                                       ("ArgMax", {"axis": 3}), ("ReduceMax", {"axes": [3]}), ("ReduceMin", {"axes": [2]})])
def test_nan_semantics_follow_onnx_reference_evaluator(op, attrs):
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    out_type = TensorProto.INT64 if op.startswith("Arg") else TensorProto.FLOAT
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "nan",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", out_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    x.reshape(-1)[RNG.choice(x.size, 12, replace=False)] = np.nan
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = kilnrt.build(model).run({"x": x})["y"]
    np.testing.assert_array_equal(got, want)
