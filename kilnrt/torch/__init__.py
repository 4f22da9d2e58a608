"""PyTorch in, without ONNX: ``kilnrt.compile`` (torch.export -> Network) and the
``torch.compile(backend="kilnrt")`` backend.  See docs/pytorch.md.

    model = kilnrt.compile(module.eval(), (x,), dynamic_shapes={"x": {0: Dim("batch", min=1, max=64)}})
    model(x); model.save("model.plan"); model = kilnrt.torch.load("model.plan")
"""
from kilnrt.torch.backend import kilnrt_backend, register
from kilnrt.torch.compiler import compile
from kilnrt.torch.module import CompiledModule, load
from kilnrt.torch.registry import aten, supported

register()

__all__ = ["compile", "load", "CompiledModule", "kilnrt_backend", "aten", "supported"]
