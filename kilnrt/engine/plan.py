"""The plan file: a versioned binary container.

    offset  size  field
    0       8     magic b"KILNPLAN"
    8       4     format version (uint32, little endian)
    12      8     header length H (uint64)
    20      8     weights length W (uint64)
    28      8     kernels length K (uint64)
    36      H     header: UTF-8 JSON (kilnrt version, device, I/O, layers, tactics, memory plan)
    36+H    W     weights: safetensors
    36+H+W  K     generated kernels: UTF-8 JSON (name -> source / binary, base64)
    end-32  32    SHA-256 of everything before it

Loading checks, in order: magic, length (truncation), checksum (corruption), format
version, kilnrt version, device.  Nothing in the file is executed.

A *signed* plan (``sign(plan, key)``) is the plan followed by ``b"KILNSIG1"`` and the
HMAC-SHA256 of the plan under the key.  The checksum catches accidents; the signature
catches edits by anyone without the key.  ``verify(data, key)`` refuses an unsigned or
wrongly signed plan and returns the plan itself; loading a signed plan without a key only
strips the signature.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import struct

import numpy as np
import torch

from kilnrt.errors import ErrorCode, PlanError
from kilnrt.network.dtypes import DataType, numpy_to_torch, torch_to_numpy

# kilnrt dtypes safetensors has no type for (sub-byte integers, float8 e8m0)
_NOT_IN_SAFETENSORS = (torch.int4, torch.uint4, torch.int2, torch.uint2, torch.float8_e8m0fnu)

MAGIC = b"KILNPLAN"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQQQ")
_DIGEST = 32


def pack(header: dict, weights: dict[str, np.ndarray], kernels: dict[str, str]) -> bytes:
    from safetensors.torch import save

    tensors, raw = {}, {}
    for k, v in weights.items():
        t = numpy_to_torch(v).contiguous()
        if t.dtype in _NOT_IN_SAFETENSORS:   # stored as their bytes, re-viewed on load
            raw[k], t = str(v.dtype), t.view(torch.uint8)
        tensors[k] = t
    if raw:
        header = {**header, "raw_weight_dtypes": raw}
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    weights_bytes = save(tensors) if tensors else b""
    kernels_bytes = json.dumps(kernels, sort_keys=True).encode("utf-8")
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_bytes), len(weights_bytes), len(kernels_bytes))
    body += header_bytes + weights_bytes + kernels_bytes
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    """(header, weights, kernels) of a plan, or a :class:`PlanError` saying what is wrong."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise PlanError(ErrorCode.PLAN_NOT_A_PLAN,
                        "this is not a kilnrt plan (its first bytes are not the KILNPLAN magic); "
                        "build one with kilnrt.build() or `kilnrt build MODEL.onnx -o MODEL.plan`")
    if len(data) < _PREFIX.size:
        raise PlanError(ErrorCode.PLAN_TRUNCATED, f"the plan is truncated: {len(data)} bytes, "
                                                  f"shorter than its {_PREFIX.size}-byte prefix")
    _, version, h, w, k = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise PlanError(ErrorCode.PLAN_VERSION,
                        f"the plan has format version {version}; this kilnrt reads version {FORMAT_VERSION}. "
                        "Rebuild the plan with this kilnrt")
    expected = _PREFIX.size + h + w + k + _DIGEST
    if len(data) < expected:
        raise PlanError(ErrorCode.PLAN_TRUNCATED,
                        f"the plan is truncated: {len(data)} bytes, but its prefix says {expected}")
    if len(data) > expected:
        raise PlanError(ErrorCode.PLAN_CORRUPT,
                        f"the plan has {len(data) - expected} unexpected trailing bytes")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise PlanError(ErrorCode.PLAN_CORRUPT, "the plan is corrupt: its SHA-256 checksum does not match its contents")
    off = _PREFIX.size
    try:
        header = json.loads(body[off: off + h].decode("utf-8"))
        weights_bytes = body[off + h: off + h + w]
        kernels = json.loads(body[off + h + w: off + h + w + k].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's header is unreadable: {exc}") from None
    except RecursionError:
        raise PlanError(ErrorCode.PLAN_CORRUPT, "the plan's header or kernels section is nested too deeply "
                                                "to be a kilnrt plan") from None
    if not isinstance(kernels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in kernels.items()):
        raise PlanError(ErrorCode.PLAN_CORRUPT, "the plan's kernels section is not a table of named entries")
    weights: dict[str, np.ndarray] = {}
    if weights_bytes:
        from safetensors.torch import load

        try:
            weights = {name: torch_to_numpy(t) for name, t in load(weights_bytes).items()}
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types
            raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's weights are unreadable: {exc}") from None
    raw = header.get("raw_weight_dtypes") if isinstance(header, dict) else None
    if raw is not None:
        try:
            for name, dtype in raw.items():
                weights[name] = weights[name].view(DataType(dtype).numpy)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise PlanError(ErrorCode.PLAN_CORRUPT, f"the plan's raw weight types are unreadable: {exc!r}") from None
    return header, weights, kernels




SIGNATURE_MAGIC = b"KILNSIG1"
_SIGNATURE = len(SIGNATURE_MAGIC) + 32


def _key_bytes(key: bytes | str) -> bytes:
    key = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(key) < 16:
        raise PlanError(ErrorCode.PLAN_SIGNATURE, f"a plan signing key must be at least 16 bytes, got {len(key)}")
    return key


def sign(plan: bytes, key: bytes | str) -> bytes:
    """``plan`` with its HMAC-SHA256 under ``key`` appended."""
    plan = strip_signature(bytes(plan))
    return plan + SIGNATURE_MAGIC + hmac.new(_key_bytes(key), plan, hashlib.sha256).digest()


def is_signed(data: bytes) -> bool:
    return len(data) > _SIGNATURE and data[-_SIGNATURE:-32] == SIGNATURE_MAGIC


def strip_signature(data: bytes) -> bytes:
    return data[:-_SIGNATURE] if is_signed(data) else data


def verify(data: bytes, key: bytes | str) -> bytes:
    """The plan inside ``data`` if ``key`` signed it; PlanError otherwise."""
    data = bytes(data)
    if not is_signed(data):
        raise PlanError(ErrorCode.PLAN_SIGNATURE, "the plan is not signed, but a key was given: sign plans with "
                                                  "engine.serialize(key=...) or `kilnrt build --sign-key`")
    plan = data[:-_SIGNATURE]
    want = hmac.new(_key_bytes(key), plan, hashlib.sha256).digest()
    if not hmac.compare_digest(want, data[-32:]):
        raise PlanError(ErrorCode.PLAN_SIGNATURE, "the plan's signature does not match this key: it was signed "
                                                  "with another key, or changed after signing")
    return plan
