"""Named tensors as JSON for the ONNX engine: decode, validate against the model, encode.

Kept free of onnxruntime so the wire format can be checked (and reused by clients) without the
runtime installed. A tensor travels as ``{"dtype": "float32", "shape": [2, 3], "data": ...}`` where
``data`` is either base64 of the little-endian bytes (exact and compact) or a nested JSON list.

Every refusal is an ``EngineAPIError`` with a stable ``code`` and never quotes tensor content: the
engine sees plaintext inputs and must not reflect them into errors that someone might log.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from veil.engines.openai_api import EngineAPIError

#: Wire dtype names → numpy dtypes (always little-endian on the wire).
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float16",
        "float32",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "bool",
    )
}

#: onnxruntime's type strings ("tensor(float)") → wire dtype names.
ORT_TYPES = {
    "tensor(float16)": "float16",
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

Encoding = Literal["base64", "list"]
Dim = int | str | None  # a fixed size, or a symbolic / unknown dimension that accepts any size


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the model declares it."""

    name: str
    dtype: str  # a key of DTYPES, or "unsupported:<ort type>"
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class Limits:
    """Per-request bounds: they keep one request from exhausting the engine's memory."""

    max_body_bytes: int = 64 << 20
    max_elements: int = 16 << 20  # per tensor
    max_tensors: int = 64


def _bad(message: str, code: str, param: str | None = None, status: int = 400) -> EngineAPIError:
    return EngineAPIError(status, message, code, param)


def _check_shape(name: str, shape: Any, limits: Limits) -> tuple[int, ...]:
    param = f"inputs.{name}.shape"
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"input '{name}': shape must be a list of non-negative integers", "invalid_shape", param)
    if len(shape) > 32:
        raise _bad(f"input '{name}': rank {len(shape)} exceeds 32", "invalid_shape", param)
    count = math.prod(shape)
    if count > limits.max_elements:
        raise _bad(
            f"input '{name}': {count} elements exceeds the limit of {limits.max_elements}", "tensor_too_large", param, status=413
        )
    return tuple(shape)


def _decode_data(name: str, data: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    param = f"inputs.{name}.data"
    count = math.prod(shape)
    if isinstance(data, str):
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"input '{name}': data is not valid base64", "invalid_data", param) from None
        if len(raw) != count * dtype.itemsize:
            raise _bad(
                f"input '{name}': {len(raw)} bytes of data, shape and dtype need {count * dtype.itemsize}",
                "shape_mismatch",
                param,
            )
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    if isinstance(data, (list, int, float, bool)):
        try:
            arr = np.array(data, dtype=dtype.newbyteorder("="))
        except (ValueError, TypeError, OverflowError):
            raise _bad(
                f"input '{name}': data list is ragged or holds values that are not {dtype.name}", "invalid_data", param
            ) from None
        if arr.shape != shape:
            raise _bad(f"input '{name}': data has shape {list(arr.shape)}, declared {list(shape)}", "shape_mismatch", param)
        return arr
    raise _bad(f"input '{name}': data must be a base64 string or a nested list", "invalid_data", param)


def _check_against_spec(name: str, arr: np.ndarray, wire_dtype: str, spec: TensorSpec) -> None:
    if wire_dtype != spec.dtype:
        raise _bad(f"input '{name}' expects dtype {spec.dtype}, got {wire_dtype}", "dtype_mismatch", f"inputs.{name}.dtype")
    if spec.shape is None:
        return
    if arr.ndim != len(spec.shape) or any(
        isinstance(want, int) and want >= 0 and want != got for want, got in zip(spec.shape, arr.shape, strict=False)
    ):
        expected = ["*" if not isinstance(d, int) or d < 0 else d for d in spec.shape]
        raise _bad(f"input '{name}' expects shape {expected}, got {list(arr.shape)}", "shape_mismatch", f"inputs.{name}.shape")


def decode_inputs(body: Any, specs: list[TensorSpec], limits: Limits = Limits()) -> dict[str, np.ndarray]:
    """Check a ``/v1/run`` body against the model's inputs and return the arrays to feed it.

    Refuses unknown or missing inputs, wrong dtypes (no silent casts), shapes that contradict the
    model's fixed dimensions, and data whose size does not match its declared shape.
    """
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "invalid_request")
    inputs = body.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise _bad("'inputs' must be a non-empty object of named tensors", "invalid_request", "inputs")
    if len(inputs) > limits.max_tensors:
        raise _bad(f"at most {limits.max_tensors} input tensors", "invalid_request", "inputs")
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(inputs) - set(by_name))
    if unknown:
        # Input names come from the caller: report how many, and the names the model does accept.
        raise _bad(
            f"{len(unknown)} unknown input name(s); the model takes: {', '.join(sorted(by_name))}", "unknown_input", "inputs"
        )
    missing = sorted(set(by_name) - set(inputs))
    if missing:
        raise _bad(f"missing input(s): {', '.join(missing)}", "missing_input", "inputs")
    total = 0
    arrays: dict[str, np.ndarray] = {}
    for name, spec in by_name.items():
        tensor = inputs[name]
        if not isinstance(tensor, dict):
            raise _bad(f"input '{name}' must be an object with dtype, shape and data", "invalid_request", f"inputs.{name}")
        wire_dtype = tensor.get("dtype")
        if not isinstance(wire_dtype, str) or wire_dtype not in DTYPES:
            raise _bad(f"input '{name}': dtype must be one of {', '.join(DTYPES)}", "unsupported_dtype", f"inputs.{name}.dtype")
        shape = _check_shape(name, tensor.get("shape"), limits)
        total += math.prod(shape)
        if total > limits.max_elements * 4:
            raise _bad("inputs hold too many elements in total", "tensor_too_large", "inputs", status=413)
        arr = _decode_data(name, tensor.get("data"), DTYPES[wire_dtype], shape)
        _check_against_spec(name, arr, wire_dtype, spec)
        arrays[name] = arr
    return arrays


def encode_tensor(arr: np.ndarray, encoding: Encoding = "base64") -> dict[str, Any]:
    """One output tensor in the wire form (little-endian bytes in base64, or a nested list)."""
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name not in DTYPES:
        raise EngineAPIError(500, f"the model produced an unsupported dtype ({name})", "unsupported_output")
    out: dict[str, Any] = {"dtype": name, "shape": list(arr.shape)}
    if encoding == "list":
        out["data"] = arr.tolist()
    else:
        out["data"] = base64.b64encode(np.ascontiguousarray(arr, dtype=DTYPES[name]).tobytes()).decode("ascii")
    return out


def tensor_to_array(tensor: dict[str, Any]) -> np.ndarray:
    """Client side: turn a wire tensor back into a numpy array (either encoding)."""
    dtype = DTYPES[tensor["dtype"]]
    shape = tuple(tensor["shape"])
    if isinstance(tensor["data"], str):
        raw = base64.b64decode(tensor["data"], validate=True)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return np.array(tensor["data"], dtype=dtype.newbyteorder("=")).reshape(shape)


def array_to_tensor(arr: np.ndarray, encoding: Encoding = "base64") -> dict[str, Any]:
    """Client side: the wire form of a numpy array (same as the engine's outputs)."""
    return encode_tensor(arr, encoding)
