"""Einsums that are batched matrix products become MATRIX_MULTIPLY layers.

Models written with ``torch.einsum`` or einops (torchvision's MaxViT: ``"bghid,bghjd->bghij"``
for the scores, ``"bghij,bghjd->bghid"`` for the weighted values; ``"bnd,de->bne"`` for a
linear layer) reach kilnrt as EINSUM layers, which no fusion reads and which run as one
``torch.einsum`` each.  An equation of two operands with one contracted index is a matrix
product over the indices both operands and the output share (the batch):

    A[batch, m..., k] @ B[batch, 1..., k, n] -> Y[batch, m..., n]

in whatever order the equation names them, with one or more free indices ``m`` on one side
and exactly one ``n`` on the other (the operands swap places when the several are B's:
``Y^T = B^T A^T``); B gets a size-1 dim for each extra ``m``, so that matmul's broadcasting
lines the rest up.  It becomes one MATRIX_MULTIPLY, its operands' last two dims swapped
through ``op0`` / ``op1`` where that is all they need, a transpose before it where the
indices are elsewhere, and one after it where the output orders its indices differently.  The
attention and epilogue fusions then see the matrix products they match; where both operand
orders are products, the one already in the output's order is taken (attention's scores
written keys first, ``"bhjd,bhid->bhij"``, stay ``Q K^T``).  Other equations (traces,
diagonals, outer products, matrix-vector products, several contracted indices or several
free ones on both sides, a contracted index that one side broadcasts from size 1, one
operand, three) stay EINSUM layers.
"""
from __future__ import annotations

from kilnrt.network.dtypes import DataType
from kilnrt.network.graph import Layer, Network
from kilnrt.network.layers import (LayerKind, MatrixMultiplyParams, MatrixOperation, ShuffleParams,
                                   UnsqueezeParams)
from kilnrt.network.rewrite import NetworkCopier
from kilnrt.optimize.passes.match import Emit, replace, rewrite

_FLOATS = {DataType.FLOAT, DataType.HALF, DataType.BF16, DataType.DOUBLE}


def parse_equation(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """The operands' index letters and the output's, ``...`` expanded to letters of its own
    (the same ones in every term, right-aligned) and an implicit output made explicit; None
    when the ellipsis spans different ranks in different operands."""
    eq = equation.replace(" ", "")
    lhs, rhs = eq.split("->") if "->" in eq else (eq, None)
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    spare = [c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in eq]
    widths = {rank - (len(t) - 3) for t, rank in zip(terms, ranks) if "..." in t}
    if len(widths) > 1 or any(w < 0 for w in widths):
        return None
    ell = "".join(spare[:widths.pop()]) if widths else ""
    terms = [t.replace("...", ell) for t in terms]
    if rhs is None:
        once = sorted(c for c in set("".join(terms)) if "".join(terms).count(c) == 1 and c not in ell)
        rhs = ell + "".join(once)
    return terms, rhs.replace("...", ell)


def _matrix_product(a: str, b: str, out: str) -> tuple[str, str, str, str] | None:
    """``(batch, m, k, n)`` index letters when ``a,b->out`` is a batched matrix product with
    one contracted index ``k``, free indices ``m`` (one or more) on ``a``'s side and exactly
    one ``n`` on ``b``'s; None otherwise (the caller swaps the operands to try the mirror)."""
    if len(set(a)) != len(a) or len(set(b)) != len(b) or len(set(out)) != len(out):
        return None  # a diagonal
    if any(c not in out and c not in b for c in a) or any(c not in out and c not in a for c in b):
        return None  # an index summed over one operand alone
    if any(c not in a and c not in b for c in out):
        return None
    batch = "".join(c for c in out if c in a and c in b)
    m = "".join(c for c in out if c in a and c not in b)
    n = [c for c in out if c in b and c not in a]
    k = [c for c in a if c in b and c not in out]
    if not m or len(n) != 1 or len(k) != 1:
        return None
    return batch, m, k[0], n[0]


def _in_order(product: tuple[str, str, str, str], out: str) -> bool:
    batch, m, _, n = product
    return batch + m + n == out


def _operand(order: str, target: str) -> tuple[tuple[int, ...] | None, MatrixOperation]:
    """How an operand indexed ``order`` is read as ``target``: a transpose before the product
    (None: none needed) and the product's ``op`` for its last two dims."""
    perm = tuple(order.index(c) for c in target)
    n = len(perm)
    if perm == tuple(range(n)):
        return None, MatrixOperation.NONE
    if n >= 2 and perm == tuple(range(n - 2)) + (n - 1, n - 2):
        return None, MatrixOperation.TRANSPOSE
    return perm, MatrixOperation.NONE


def lower_einsum(net: Network, stats: dict | None = None) -> Network:
    """Each two-operand floating-point EINSUM whose equation is a batched matrix product
    becomes a MATRIX_MULTIPLY (plus the transposes its index order needs)."""
    net.infer()
    rewrites = {}
    for layer in net.layers:
        if layer.kind != LayerKind.EINSUM or len(layer.inputs) != 2:
            continue
        a_t, b_t = layer.inputs
        if any(t is None or t.shape is None or t.dtype not in _FLOATS for t in (a_t, b_t)) or a_t.dtype != b_t.dtype:
            continue
        parsed = parse_equation(layer.params.equation, [len(a_t.shape), len(b_t.shape)])
        if parsed is None:
            continue
        (a, b), out = parsed
        # the orientation whose product is already in the output's order (attention's
        # "bhjd,bhid->bhij" is K Q^T transposed: Q K^T itself, the product attention fusion matches)
        forward, mirrored = _matrix_product(a, b, out), _matrix_product(b, a, out)
        swapped = forward is None or (mirrored is not None and not _in_order(forward, out)
                                      and _in_order(mirrored, out))
        product = mirrored if swapped else forward
        if product is None:
            continue
        if swapped:
            a, b = b, a
        batch, m, k, n = product
        first, second = (b_t, a_t) if swapped else (a_t, b_t)
        if dict(zip(a, first.shape))[k] != dict(zip(b, second.shape))[k]:
            continue  # a contracted index of size 1 on one side, broadcast: not a matrix product
        product_order = batch + m + n
        out_perm = tuple(product_order.index(c) for c in out)
        # B's size-1 dims under A's extra m (without a batch, broadcasting lines B up already)
        b_ones = tuple(range(len(batch), len(batch) + len(m) - 1)) if batch else ()
        rewrites[id(layer)] = _lowered(layer, swapped, _operand(a, batch + m + k), _operand(b, batch + k + n), b_ones,
                                       None if out_perm == tuple(range(len(out))) else out_perm)
    return replace(net, rewrites, set(), stats, "lower_einsum")


def _lowered(layer: Layer, swapped: bool, a_read, b_read, b_ones: tuple[int, ...],
             out_perm: tuple[int, ...] | None) -> Emit:
    (a_perm, op0), (b_perm, op1) = a_read, b_read

    def emit(c: NetworkCopier):
        ins = [c.mapped(t) for t in (layer.inputs[::-1] if swapped else layer.inputs)]
        for i, perm in ((0, a_perm), (1, b_perm)):
            if perm is not None:
                ins[i] = c.add_beside(LayerKind.SHUFFLE, ShuffleParams(first_transpose=perm), [ins[i]], [layer],
                                      name=f"{layer.name}/operand{i}").outputs[0]
        if b_ones:
            ins[1] = c.add_beside(LayerKind.UNSQUEEZE, UnsqueezeParams(axes=b_ones), [ins[1]], [layer],
                                  name=f"{layer.name}/broadcast").outputs[0]
        params = MatrixMultiplyParams(op0=op0, op1=op1)
        if out_perm is None:
            return c.add_merged(LayerKind.MATRIX_MULTIPLY, params, ins, [layer]).outputs[0]
        # the last layer carries the einsum's name and output tensor
        y = c.add_beside(LayerKind.MATRIX_MULTIPLY, params, ins, [layer], name=f"{layer.name}/matmul").outputs[0]
        return c.add_merged(LayerKind.SHUFFLE, ShuffleParams(first_transpose=out_perm), [y], [layer]).outputs[0]

    return rewrite([layer], emit)
