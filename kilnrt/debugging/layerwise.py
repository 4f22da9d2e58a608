"""Layer-by-layer comparison with ONNX Runtime (Polygraphy's ``--trt-outputs mark all
--onnx-outputs mark all``).

Every tensor that an ONNX node of the main graph produces, and that the imported network
still holds under that name, is made an output of the kilnrt network and of the ONNX model
run by ONNX Runtime; both run on the same inputs and the tensors are compared in the
model's node order. The first one beyond tolerance is where the results start to differ;
the ones after it mostly inherit its error.

Marking a tensor as an output keeps it in memory and stops the fusions that would have
absorbed it, so the engine compared is not quite the one a plain build makes (Polygraphy
says the same of TensorRT). Tensors the importer folded away (constants, Identity, shapes
known at import) cannot be compared and are listed as such.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from kilnrt.network.graph import Network
from kilnrt.network.layers import LayerKind


@dataclass
class TensorSite:
    """A tensor of the ONNX graph: its name, the node that makes it, and that node's op."""
    name: str
    node: str
    op: str
    marked: bool          # False: the network does not hold it (folded at import)


def node_outputs(proto) -> list[TensorSite]:
    """Every output of every node of the main graph, in node (topological) order."""
    out = []
    for i, node in enumerate(proto.graph.node):
        for name in node.output:
            if name:
                out.append(TensorSite(name, node.name or f"{node.op_type}_{i}", node.op_type, False))
    return out


def mark_all_outputs(network: Network, proto) -> tuple[Network, list[TensorSite]]:
    """A clone of ``network`` whose every non-constant tensor named like an ONNX node output is
    an output; returns it and the ONNX tensors (``marked`` says which the network holds)."""
    net = network.clone()
    produced = {t.name: (l, t) for l in net.layers for t in l.outputs}
    sites = node_outputs(proto)
    for site in sites:
        entry = produced.get(site.name)
        if entry is None or entry[0].kind == LayerKind.CONSTANT:
            continue
        site.marked = True
        net.mark_output(entry[1])
    return net, sites


@dataclass
class TensorCheck:
    site: TensorSite
    comparison: Any = None       # a kilnrt.testing.Comparison; None when not compared
    problem: str | None = None   # why it was not compared
    nonfinite: int = 0           # elements kilnrt made inf/NaN where ONNX Runtime's are finite

    @property
    def ok(self) -> bool:
        return self.comparison is not None and self.comparison.ok


def compare_sites(sites: list[TensorSite], actual: Mapping[str, Any], expected: Mapping[str, Any],
                  rtol: float, atol: float, seed: int | None = None) -> list[TensorCheck]:
    """One check per ONNX tensor, in node order."""
    checks = []
    for site in sites:
        if not site.marked:
            checks.append(TensorCheck(site, problem="not in the kilnrt network (folded at import)"))
        elif site.name not in actual:
            checks.append(TensorCheck(site, problem="kilnrt did not produce it"))
        elif site.name not in expected:
            checks.append(TensorCheck(site, problem="ONNX Runtime did not produce it"))
        else:
            checks.append(check_tensor(site, actual[site.name], expected[site.name], rtol, atol, seed))
    return checks


def check_tensor(site: TensorSite, actual: Any, expected: Any, rtol: float, atol: float,
                 seed: int | None = None) -> TensorCheck:
    from kilnrt.testing import compare

    c = compare(actual, expected, rtol, atol, name=site.name, seed=seed)
    a, e = np.asarray(actual), np.asarray(expected)
    nonfinite = 0
    if a.shape == e.shape and a.dtype.kind in "fc" and e.dtype.kind in "fc":
        nonfinite = int((~np.isfinite(a) & np.isfinite(e)).sum())
    return TensorCheck(site, c, nonfinite=nonfinite)


def first_divergence(checks: list[TensorCheck]) -> TensorCheck | None:
    """The first compared tensor beyond tolerance, in node order (None: all within)."""
    return next((c for c in checks if c.comparison is not None and not c.ok), None)


def describe(check: TensorCheck) -> str:
    """``max abs error 2.1e-07, max rel error 3.4e-05`` (plus the worst element when it fails)."""
    c = check.comparison
    if c is None:
        return check.problem or "not compared"
    if c.problem:
        return c.problem
    text = f"max abs error {c.max_abs:.3g}, max rel error {c.max_rel:.3g}"
    if not c.ok and c.worst_index is not None:
        text += (f", {c.mismatched} of {c.total} elements outside tolerance (worst at {list(c.worst_index)}: "
                 f"kilnrt {c.worst_actual:.6g}, ONNX Runtime {c.worst_expected:.6g})")
    if check.nonfinite:
        text = (f"{check.nonfinite} of {c.total} elements inf/NaN where ONNX Runtime's are finite (FP16's largest "
                f"value is 65504); " + text.replace("max abs error", "finite elements: max abs error", 1))
    return text
