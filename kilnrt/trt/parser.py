"""TensorRT's ``OnnxParser`` over :mod:`kilnrt.onnx`: fills the caller's network, collects errors."""
from __future__ import annotations

import enum
import os
from typing import Any

from kilnrt.builder.refit import remember_onnx
from kilnrt.errors import ErrorCode, ImportErrors, KilnError
from kilnrt.network.graph import Network
from kilnrt.trt.logger import ILogger, Severity, report
from kilnrt.trt.strict import ERROR_RECORDER, Strict


class OnnxParserFlag(enum.IntEnum):
    NATIVE_INSTANCENORM = 0       # accepted; kilnrt always imports InstanceNormalization natively
    ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA = 1


class ParserError:
    """One parser error (TensorRT's ``ParserError``)."""

    def __init__(self, error: KilnError, node_index: int) -> None:
        self._error = error
        self._node = node_index

    def code(self) -> str:
        return self._error.code

    def desc(self) -> str:
        return self._error.describe()

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._error.node or ""

    def node_operator(self) -> str:
        return self._error.op or ""

    def file(self) -> str:
        return ""

    def func(self) -> str:
        return ""

    def line(self) -> int:
        return 0

    def local_function_stack(self) -> list[str]:
        return []

    def local_function_stack_size(self) -> int:
        return 0

    def __str__(self) -> str:
        where = f"In node {self._node} with name: {self.node_name()} and operator: {self.node_operator()}: " \
            if self._node >= 0 else ""
        return f"{where}{self.desc()}"

    __repr__ = __str__


class OnnxParser(Strict):
    """``OnnxParser(network, logger)``: ``parse(bytes)`` / ``parse_from_file(path)`` fill ``network``."""

    _IGNORED = {"error_recorder": ERROR_RECORDER}

    def __init__(self, network: Network, logger: ILogger | None = None) -> None:
        self.network = network
        self.logger = logger
        self.flags = 0
        self._errors: list[ParserError] = []
        self._seal()

    def __enter__(self) -> "OnnxParser":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    # -- parsing ------------------------------------------------------------------------
    def parse(self, model: bytes, path: str | None = None) -> bool:
        """Parse a serialized ONNX model; ``path``: the model file, for external weights."""
        from kilnrt.onnx.parser import load_model

        try:
            proto, _ = load_model(bytes(model))
        except KilnError as exc:
            return self._fail([exc], {})
        return self._parse(proto, os.path.dirname(os.path.abspath(path)) if path else None)

    def parse_from_file(self, model: str) -> bool:
        from kilnrt.onnx.parser import load_model

        try:
            proto, model_dir = load_model(os.fspath(model))
        except KilnError as exc:
            return self._fail([exc], {})
        return self._parse(proto, model_dir)

    parse_with_weight_descriptors = parse

    def _parse(self, proto, model_dir: str | None) -> bool:
        from kilnrt.onnx.parser import parse_proto

        index = {(n.name or f"{n.op_type}_{i}"): i for i, n in enumerate(proto.graph.node)}
        try:
            parsed = parse_proto(proto, model_dir=model_dir)
        except ImportErrors as exc:
            return self._fail(exc.errors, index)
        except KilnError as exc:
            return self._fail([exc], index)
        try:
            self.network.adopt(parsed)
        except KilnError as exc:
            return self._fail([exc], index)
        remember_onnx(self.network, proto)   # a REFIT build re-parses it to redo the importer's folds
        return True

    def _fail(self, errors: list[KilnError], index: dict[str, int]) -> bool:
        for e in errors:
            self._errors.append(ParserError(e, index.get(e.node, -1) if e.node else -1))
            report(self.logger, Severity.ERROR, e.describe())
        return False

    def supports_model(self, model: bytes, path: str | None = None) -> tuple[bool, list]:
        """(whether every node is supported, [(node indices, supported)]) without filling the network."""
        from kilnrt.onnx.parser import check_model, load_model

        proto, _ = load_model(bytes(model))
        errors = check_model(proto)
        bad_ops = {e.op for e in errors if e.code == ErrorCode.UNSUPPORTED_NODE}
        bad_nodes = {e.node for e in errors}
        ok = [n.op_type not in bad_ops and (n.name or f"{n.op_type}_{i}") not in bad_nodes
              for i, n in enumerate(proto.graph.node)]
        return all(ok), [([i], good) for i, good in enumerate(ok)]

    def supports_operator(self, op_name: str) -> bool:
        from kilnrt.onnx import registry

        return any(op == op_name for (_, op) in registry.registered())

    # -- errors -------------------------------------------------------------------------
    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    # -- flags --------------------------------------------------------------------------
    def set_flag(self, flag: OnnxParserFlag) -> None:
        self.flags |= 1 << int(flag)

    def clear_flag(self, flag: OnnxParserFlag) -> None:
        self.flags &= ~(1 << int(flag))

    def get_flag(self, flag: OnnxParserFlag) -> bool:
        return bool(self.flags >> int(flag) & 1)

    def get_used_vc_plugin_libraries(self) -> list[str]:
        return []


__all__ = ["ErrorCode", "OnnxParser", "OnnxParserFlag", "ParserError"]
