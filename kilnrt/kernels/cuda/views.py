"""Data-movement layers that need no kernel: outputs that are views of their inputs.

``cuda.gather.view``: a Gather whose indices are a constant scalar, or a constant 1-D
arithmetic progression with a positive step, picks a strided view of its data
(``select`` / a stepped slice) instead of copying with ``index_select``.  The indices are
normalized once at build time, so no index arithmetic runs on the device either.  This is
how exporters split fused Q/K/V projections (torchvision's attention gathers 0, 1, 2).
"""
from __future__ import annotations

from kilnrt.kernels.registry import Tactic, tactic
from kilnrt.kernels.views import gather_as_view
from kilnrt.network.layers import LayerKind


@tactic
class GatherView(Tactic):
    name = "cuda.gather.view"
    kind = LayerKind.GATHER
    device = "cuda"

    def _plan(self, layer, ctx):
        data = layer.inputs[0]
        return gather_as_view(layer.params, None if data is None else data.shape, ctx.constant(layer, 1))

    def supports(self, layer, ctx) -> bool:
        return self._plan(layer, ctx) is not None

    def prepare(self, layer, ctx):
        return self._plan(layer, ctx)

    def run(self, state, inputs):
        axis, how, arg = state
        x = inputs[0]
        if how == "select":
            return [x.select(axis, arg)]
        start, stop, step = arg
        index = [slice(None)] * axis + [slice(start, stop, step)]
        return [x[tuple(index)]]
