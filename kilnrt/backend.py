"""ONNX's standard backend interface, so that ONNX's own conformance suite can drive kilnrt.

    import kilnrt.backend as backend
    rep = backend.prepare(model, "CPU")
    outputs = rep.run([x])
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

import kilnrt
from kilnrt.engine import Engine

_DEVICES = {"CPU": "cpu", "CUDA": "cuda"}


class KilnBackendRep(BackendRep):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        names = self.engine.input_names
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray) and len(names) == 1:
                inputs = [inputs]
            feeds = dict(zip(names, inputs))
        out = self.engine.run(feeds)
        return tuple(out[n] for n in self.engine.output_names)


class KilnBackend(Backend):
    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return True

    @classmethod
    def supports_device(cls, device: str) -> bool:
        dev = _DEVICES.get(str(device).split(":")[0].upper())
        if dev == "cuda":
            import torch

            return torch.cuda.is_available()
        return dev == "cpu"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> KilnBackendRep:
        dev = _DEVICES.get(str(device).split(":")[0].upper(), "cpu")
        return KilnBackendRep(kilnrt.build(model, device=dev))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[np.ndarray], device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple]] | None = None, **kwargs: Any):
        """Run one node: wraps it in a one-node model with the inputs' types and shapes."""
        from onnx import helper

        ins = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(x).dtype),
                                             np.asarray(x).shape)
               for name, x in zip(node.input, inputs) if name]
        outs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output if name]
        graph = helper.make_graph([node], "run_node", ins, outs)
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        feeds = {name: np.asarray(x) for name, x in zip(node.input, inputs) if name}
        return cls.prepare(model, device).run(feeds)


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
run_node = KilnBackend.run_node
supports_device = KilnBackend.supports_device
is_compatible = KilnBackend.is_compatible
