"""ONNX Runtime as the reference: run a model, optionally with extra tensors made outputs."""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from kilnrt.errors import ErrorCode, KilnError


def load_proto(model: Any):
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto (external data loaded)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    try:
        return onnx.load(os.fspath(model))
    except Exception as exc:  # noqa: BLE001 - onnx's own parse errors
        raise KilnError(ErrorCode.INVALID_MODEL, f"cannot read the ONNX model {str(model)!r}: {exc}") from None


def with_outputs(proto, names: Sequence[str]):
    """A copy of ``proto`` whose graph also outputs ``names`` (node outputs of the main graph)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    return model


def onnxruntime_run(model: Any, feeds: Mapping[str, Any], extra_outputs: Sequence[str] = ()) -> dict[str, Any]:
    """Every output of ``model`` (path, bytes or ModelProto), plus ``extra_outputs``, computed by
    ONNX Runtime's CPU provider on ``feeds``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        "comparing with ONNX Runtime needs onnxruntime: pip install onnxruntime") from None
    source = model
    if extra_outputs:
        source = with_outputs(load_proto(model), extra_outputs)
    if not isinstance(source, (str, os.PathLike)):
        source = load_proto(source).SerializeToString()
    try:
        runner = ort.InferenceSession(os.fspath(source) if isinstance(source, os.PathLike) else source,
                                      providers=["CPUExecutionProvider"])
        names = [o.name for o in runner.get_outputs()]
        return dict(zip(names, runner.run(names, dict(feeds))))
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own errors
        shown = model if isinstance(model, (str, os.PathLike)) else "the model"
        raise KilnError(ErrorCode.INVALID_MODEL, f"ONNX Runtime could not run {str(shown)!r}: {exc}") from None
