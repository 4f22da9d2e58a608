"""The optimizer: an ordered list of named passes, each enabled from an optimization level."""
from __future__ import annotations

import logging
import time
from typing import Callable

from kilnrt.network.graph import Network
from kilnrt.optimize.passes.activations import fuse_activations
from kilnrt.optimize.passes.cleanup import (eliminate_common_subexpressions, eliminate_dead_layers, fold_constants,
                                            remove_identities)
from kilnrt.optimize.passes.concat import share_concatenations
from kilnrt.optimize.passes.einsum import lower_einsum
from kilnrt.optimize.passes.fusion import (fuse_conv_epilogue, fuse_conv_input_scale, fuse_conv_scale,
                                            fuse_matmul_scale, fuse_squeeze_excitation, move_residual_bias)
from kilnrt.optimize.passes.norms import fuse_normalizations
from kilnrt.optimize.passes.horizontal import fuse_sibling_convs, fuse_sibling_matmuls
from kilnrt.optimize.passes.pointwise import fuse_pointwise, scales_to_elementwise
from kilnrt.optimize.passes.quantization import fold_qdq
from kilnrt.optimize.passes.transformer import fuse_add_norm, fuse_attention, fuse_matmul_epilogue
from kilnrt.optimize.passes.views import fold_view_chains, sink_reshape_into_matmul

log = logging.getLogger("kilnrt.optimize")

Pass = Callable[..., Network]

# (name, pass, lowest builder optimization level that runs it)
PIPELINE: list[tuple[str, Pass, int]] = [
    ("fold_qdq", fold_qdq, 0),  # first: constant folding would turn the weights' DQ into float weights
    ("fold_constants", fold_constants, 0),
    ("remove_identities", remove_identities, 0),
    ("eliminate_dead_layers", eliminate_dead_layers, 0),
    ("eliminate_common_subexpressions", eliminate_common_subexpressions, 1),
    ("share_concatenations", share_concatenations, 1),  # after CSE: equal concatenations are one by then
    ("lower_einsum", lower_einsum, 1),  # before the matmul and attention fusions, which read its products
    ("fuse_activations", fuse_activations, 1),  # before the epilogue fusions, which absorb them
    ("fuse_normalizations", fuse_normalizations, 1),  # before fuse_add_norm, which takes their residual adds
    ("fuse_conv_scale", fuse_conv_scale, 1),
    ("fuse_conv_input_scale", fuse_conv_input_scale, 1),  # after: a norm between two convolutions goes into the first
    ("fuse_matmul_scale", fuse_matmul_scale, 1),
    ("fold_constants", fold_constants, 1),
    ("eliminate_dead_layers", eliminate_dead_layers, 1),
    ("fuse_conv_epilogue", fuse_conv_epilogue, 2),
    ("move_residual_bias", move_residual_bias, 2),
    ("fuse_squeeze_excitation", fuse_squeeze_excitation, 2),
    # after the convolution fusions: siblings compare their fused activations and must have no
    # residual; merged first, a member's output would be a slice that no epilogue absorbs, and a
    # residual convolution move_residual_bias strips would no longer be a convolution.  The SE
    # gate's 1x1 convolutions are single readers of their inputs, so never siblings either way.
    ("fuse_sibling_convs", fuse_sibling_convs, 2),
    ("fuse_attention", fuse_attention, 2),
    ("fuse_matmul_epilogue", fuse_matmul_epilogue, 2),
    ("fuse_add_norm", fuse_add_norm, 2),
    ("fuse_sibling_matmuls", fuse_sibling_matmuls, 2),
    ("sink_reshape_into_matmul", sink_reshape_into_matmul, 2),
    ("fold_view_chains", fold_view_chains, 2),
    ("eliminate_dead_layers", eliminate_dead_layers, 2),
    ("scales_to_elementwise", scales_to_elementwise, 3),  # scales left beside pointwise layers join their regions
    ("fuse_pointwise", fuse_pointwise, 3),  # after the anchor fusions: takes what they left
    ("eliminate_dead_layers", eliminate_dead_layers, 3),  # the weights scales_to_elementwise replaced
]


def optimize(net: Network, level: int = 3, *, report: list | None = None) -> Network:
    """Run every pass enabled at ``level``; log layer counts before and after each."""
    for name, fn, min_level in PIPELINE:
        if level < min_level:
            continue
        before = len(net.layers)
        stats: dict = {}
        t0 = time.perf_counter()
        net = fn(net, stats)
        dt = time.perf_counter() - t0
        log.info("pass %-24s %5d -> %5d layers (%.3f s) %s", name, before, len(net.layers), dt,
                 stats.get(name, ""))
        if report is not None:
            report.append({"pass": name, "layers_before": before, "layers_after": len(net.layers),
                           "seconds": round(dt, 4), "rewrites": stats.get(name, 0)})
    return net
