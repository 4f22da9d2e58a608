"""Caffe deploy.prototxt + .caffemodel -> a kilnrt Network, as TensorRT's CaffeParser read them."""
from __future__ import annotations

from typing import Any, Iterable

from kilnrt.caffe.context import Context
from kilnrt.caffe.files import blob_array, read_deploy, read_model, weights_by_layer
from kilnrt.caffe.layers import CONVERTERS, input_shapes, unsupported
from kilnrt.errors import ErrorCode, KilnError
from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Network, Tensor


class BlobNameToTensor:
    """TensorRT's ``IBlobNameToTensor``: each Caffe blob's tensor (the last layer that wrote it)."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self._tensors = dict(tensors)

    def find(self, name: str) -> Tensor | None:
        """The tensor of blob ``name``, or None (TensorRT returns a null pointer)."""
        return self._tensors.get(name)

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._tensors:
            raise KeyError(f"no Caffe blob named {name!r}; blobs: {', '.join(self._tensors)}")
        return self._tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def names(self) -> list[str]:
        return list(self._tensors)


def _inputs(net, network: Network, dtype: DataType, tensors: dict[str, Tensor]) -> None:
    """The net-level inputs: ``input`` with ``input_shape`` or four ``input_dim`` per input."""
    names = list(net.input)
    if net.input_shape:
        shapes = [tuple(int(d) for d in s.dim) for s in net.input_shape]
    else:
        dims = [int(d) for d in net.input_dim]
        if len(dims) != 4 * len(names):
            raise KilnError(ErrorCode.INVALID_MODEL, f"the net declares {len(names)} input(s) with "
                                                     f"{len(dims)} input_dim values; give 4 per input or input_shape")
        shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
    if len(shapes) != len(names):
        raise KilnError(ErrorCode.INVALID_MODEL, f"{len(names)} input(s) but {len(shapes)} input_shape(s)")
    for name, shape in zip(names, shapes):
        tensors[name] = network.add_input(name, dtype, shape)


def _name_tops(ctx: Context, layer, outs: list[Tensor]) -> None:
    """Record each top; a new tensor takes the blob's name (an in-place layer's input is renamed)."""
    if len(outs) != len(layer.top):
        raise ctx.fail(f"has {len(layer.top)} top(s); kilnrt's converter makes {len(outs)}", ErrorCode.INVALID_NODE)
    known = {id(t) for t in ctx.tensors.values()}
    for top, t in zip(layer.top, outs):
        old = ctx.tensors.get(top)
        if id(t) not in known and t.name != top:    # a tensor this layer made
            if old is not None and old.name == top and not old.is_network_input:
                old.name = ctx.network.unique_name(f"{top}/before_{layer.name}")
            if top not in ctx.network.tensors:
                t.name = top
        ctx.tensors[top] = t


def populate(network: Network, deploy: Any, model: Any = None, dtype: DataType = DataType.FLOAT) -> BlobNameToTensor:
    """Add a Caffe net's layers to ``network``; returns its blob table (outputs are not marked)."""
    if dtype not in (DataType.FLOAT,):
        raise KilnError(ErrorCode.INVALID_ARGUMENT,
                        f"Caffe weights are parsed as FLOAT only, got {dtype}; build with FP16 allowed "
                        "(BuilderFlag.FP16, fp16=True) for half-precision layers")
    net = read_deploy(deploy)
    weights = {} if model is None else weights_by_layer(read_model(model))
    for layer in net.layer:     # weights written into the deploy file itself also count
        if layer.blobs and layer.name not in weights:
            weights[layer.name] = [blob_array(b, layer.name) for b in layer.blobs]
    tensors: dict[str, Tensor] = {}
    ctx = Context(network, tensors, weights)
    _inputs(net, network, dtype, tensors)
    error = unsupported(net)
    if error is not None:
        raise error
    for layer in net.layer:
        ctx.layer = layer
        if layer.type == "Input":
            for top, shape in zip(layer.top, input_shapes(ctx, layer)):
                tensors[top] = network.add_input(top, dtype, shape)
            continue
        _name_tops(ctx, layer, CONVERTERS[layer.type](ctx, layer))
    return BlobNameToTensor(tensors)


def _terminal_blobs(deploy_net, tensors: BlobNameToTensor) -> list[str]:
    """Blobs no later layer reads: Caffe's net outputs."""
    used: set[str] = set()
    for layer in deploy_net.layer:
        used.update(b for b in layer.bottom if b not in layer.top)
    tops = [t for layer in deploy_net.layer for t in layer.top]
    return list(dict.fromkeys(t for t in tops if t not in used and t in tensors))


def parse(deploy: Any, model: Any = None, outputs: Iterable[str] | None = None, *,
          dtype: DataType = DataType.FLOAT) -> Network:
    """A Network from a deploy.prototxt (path, text or bytes) and a .caffemodel (path or bytes).

    ``outputs``: blob names to mark as outputs; by default the blobs no layer reads.
    """
    network = Network("caffe")
    blobs = populate(network, deploy, model, dtype)
    names = list(outputs) if outputs is not None else _terminal_blobs(read_deploy(deploy), blobs)
    for name in names:
        t = blobs.find(name)
        if t is None:
            raise KilnError(ErrorCode.UNKNOWN_TENSOR, f"output {name!r} is no blob of the Caffe net; blobs: "
                                                      f"{', '.join(blobs.names())}")
        network.mark_output(t)
    return network
