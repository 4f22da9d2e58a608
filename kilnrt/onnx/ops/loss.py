"""Importers for the loss ops: NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss.

Both decompose into gathers, selects, elementwise math and reductions:
``loss[n, d..] = -input[n, target[n, d..], d..] * w[n, d..]`` with ``w = weight[target]`` (1
without weights) and ``w = 0`` where ``target == ignore_index``; ``mean`` divides the sum of
the losses by the sum of ``w``.
"""
from __future__ import annotations

import numpy as np

from kilnrt.errors import ErrorCode
from kilnrt.network.layers import (ElementWiseOperation as E, GatherMode, GatherParams, LayerKind,
                                   ReduceOperation as R, ReduceParams, SelectParams, SoftmaxParams,
                                   SqueezeParams, UnaryOperation as U)
from kilnrt.onnx.registry import importer

_REDUCTIONS = ("none", "sum", "mean")


def _scalar(ctx, value, like):
    return ctx.constant(np.asarray(value, dtype=ctx.dtype(like).numpy))


def negative_log_likelihood(ctx, log_prob, target, weight, reduction: str, ignore_index):
    ctx.require(reduction in _REDUCTIONS, ErrorCode.UNSUPPORTED_NODE_ATTR,
                f"reduction={reduction!r}; supported: {', '.join(_REDUCTIONS)}")
    rank = ctx.rank(log_prob)
    ctx.require(rank >= 2, ErrorCode.INVALID_NODE,
                f"the input must be [N, C] or [N, C, d1, ...]; got rank {rank}")
    ignored = None
    if ignore_index is not None:   # ignored targets may be out of range: gather class 0 instead
        ignored = ctx.elementwise(E.EQUAL, target, ctx.constant(np.asarray(ignore_index, ctx.dtype(target).numpy)))
        target = ctx.out(LayerKind.SELECT, SelectParams(), ignored,
                         ctx.constant(np.zeros((), ctx.dtype(target).numpy)), target)
    picked = ctx.out(LayerKind.GATHER, GatherParams(1, GatherMode.ELEMENT), log_prob, ctx.unsqueeze(target, [1]))
    loss = ctx.unary(U.NEG, ctx.out(LayerKind.SQUEEZE, SqueezeParams((1,)), picked))
    w = None
    if weight is not None:
        w = ctx.out(LayerKind.GATHER, GatherParams(0), weight, target)
    if ignored is not None:
        w = ctx.out(LayerKind.SELECT, SelectParams(), ignored, _scalar(ctx, 0, log_prob),
                    w if w is not None else _scalar(ctx, 1, log_prob))
    if w is not None:
        loss = ctx.elementwise(E.PROD, loss, w)
    if reduction == "none":
        return loss
    total = ctx.out(LayerKind.REDUCE, ReduceParams(R.SUM, None, False), loss)
    if reduction == "sum":
        return total
    if w is None:
        return ctx.out(LayerKind.REDUCE, ReduceParams(R.AVG, None, False), loss)
    return ctx.elementwise(E.DIV, total, ctx.out(LayerKind.REDUCE, ReduceParams(R.SUM, None, False), w))


@importer("NegativeLogLikelihoodLoss", since=12)
def negative_log_likelihood_loss(ctx, node, input, target, weight=None, *, ignore_index=None, reduction="mean"):
    """NegativeLogLikelihoodLoss: reductions none/sum/mean, class weights, ignore_index."""
    return negative_log_likelihood(ctx, input, target, weight, reduction, ignore_index)


@importer("SoftmaxCrossEntropyLoss", since=12)
def softmax_cross_entropy_loss(ctx, node, scores, labels, weights=None, *, ignore_index=None, reduction="mean"):
    """SoftmaxCrossEntropyLoss: NLL of LogSoftmax over axis 1; the optional 2nd output is the log-probability."""
    log_prob = ctx.out(LayerKind.SOFTMAX, SoftmaxParams(axis=1, log=True), scores)
    loss = negative_log_likelihood(ctx, log_prob, labels, weights, reduction, ignore_index)
    return loss, log_prob
