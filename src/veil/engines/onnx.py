"""ONNX Runtime engine (BlindAI's flow): named tensors in, named tensors out, over a Unix socket.

Run as ``python -m veil.engines.onnx --model PATH --socket PATH [--threads N]``.

Endpoints: ``POST /v1/run`` (body ``{"inputs": {name: tensor}, "output_encoding": "base64"|"list",
"outputs": [names]}``, tensors as described in ``veil.engines.onnx_api``), ``GET /v1/models`` (the
input/output signature), ``GET /health``. Errors use the OpenAI error shape like every Veil engine.

``--model`` may be a memfd path (``/proc/self/fd/N``, ``/dev/fd/N``): sealed weights are unsealed
into memory only, so the model is read into bytes and handed to onnxruntime from there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from veil.engines import cli
from veil.engines.base import Backend
from veil.engines.onnx_api import ORT_TYPES, Limits, TensorSpec, decode_inputs, encode_tensor
from veil.engines.openai_api import EngineAPIError, check_model
from veil.engines.openai_app import engine_app

_FD_PATH = re.compile(r"^/(proc/(self|\d+)|dev)/fd/\d+$")


def read_model_bytes(path: str | Path) -> bytes:
    """Read a whole model file, which may be a memfd reached through /proc/self/fd or /dev/fd."""
    with open(path, "rb") as fh:
        return fh.read()


def is_fd_path(path: str | Path) -> bool:
    """True for /proc/self/fd/N, /proc/PID/fd/N and /dev/fd/N (memfd-backed weights)."""
    return bool(_FD_PATH.match(str(path)))


def _spec(arg: Any) -> TensorSpec:
    dtype = ORT_TYPES.get(arg.type, f"unsupported:{arg.type}")
    shape = None if arg.shape is None else tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, dtype, shape)


class OnnxBackend(Backend):
    """One ONNX Runtime CPU session; runs go through a small pool so they never block the loop.

    A tensor model, not a language model: it serves ``/v1/run`` only (sessions are thread-safe, so
    two runs may overlap) and no OpenAI chat, completion or embedding endpoint.
    """

    def __init__(self, model: str | Path | bytes, model_id: str, threads: int) -> None:
        import onnxruntime as ort

        super().__init__(model_id)

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only; ORT never logs tensor values at this level
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        source: str | bytes = model if isinstance(model, bytes) else str(model)
        if isinstance(source, str) and is_fd_path(source):
            source = read_model_bytes(source)  # ORT would try to mmap or resolve siblings
        self.session = ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="onnx")

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "inputs": [s.describe() for s in self.inputs],
            "outputs": [s.describe() for s in self.outputs],
        }

    async def run(self, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.session.run, names, feeds)


async def read_json_body(request: Request, limit: int) -> Any:
    """The JSON body, read in chunks and refused (413) as soon as it passes ``limit`` bytes.

    Reading chunk by chunk means an oversized body costs at most ``limit`` bytes of memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise EngineAPIError(413, f"request body exceeds {limit} bytes", "body_too_large")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise EngineAPIError(413, f"request body exceeds {limit} bytes", "body_too_large")
    try:
        return json.loads(buf)
    except (ValueError, UnicodeDecodeError):
        raise EngineAPIError(400, "request body is not valid JSON", "invalid_json") from None


def _output_names(body: dict[str, Any], backend: OnnxBackend) -> list[str]:
    known = [s.name for s in backend.outputs]
    wanted = body.get("outputs")
    if wanted is None:
        return known
    if not isinstance(wanted, list) or not wanted or not all(isinstance(n, str) for n in wanted):
        raise EngineAPIError(400, "'outputs' must be a non-empty list of output names", "invalid_request", "outputs")
    if any(n not in known for n in wanted):
        raise EngineAPIError(400, f"unknown output name; the model produces: {', '.join(known)}", "unknown_output", "outputs")
    return list(dict.fromkeys(wanted))


def create_app(backend: OnnxBackend, limits: Limits = Limits()) -> FastAPI:
    """The tensor-serving ASGI app for one loaded model."""
    app = engine_app(backend)

    @app.post("/v1/run")
    async def run(request: Request) -> JSONResponse:
        body = await read_json_body(request, limits.max_body_bytes)
        if not isinstance(body, dict):
            raise EngineAPIError(400, "request body must be a JSON object", "invalid_request")
        check_model(body.get("model"), backend.model_id)
        encoding = body.get("output_encoding", "base64")
        if encoding not in ("base64", "list"):
            raise EngineAPIError(400, "output_encoding must be 'base64' or 'list'", "invalid_request", "output_encoding")
        names = _output_names(body, backend)
        feeds = decode_inputs(body, backend.inputs, limits)
        del body  # drop the decoded JSON (and its copy of the data) before running
        try:
            results = await backend.run(feeds, names)
        except Exception as exc:  # ORT's text may describe the data; keep only its kind
            raise EngineAPIError(
                400 if "InvalidArgument" in type(exc).__name__ else 500,
                f"inference failed ({type(exc).__name__})",
                "inference_failed",
            ) from None
        outputs = {n: encode_tensor(r, encoding) for n, r in zip(names, results, strict=True)}
        return JSONResponse({"object": "tensors", "model": backend.model_id, "outputs": outputs})

    return app


def _load(args: argparse.Namespace) -> tuple[Any, str]:
    model_id = args.model_id or ("onnx-model" if is_fd_path(args.model) else Path(args.model).stem)
    backend = OnnxBackend(args.model, model_id, args.threads)
    limits = Limits(max_body_bytes=args.max_body_mb << 20, max_elements=args.max_elements)
    return create_app(backend, limits), f"serving {model_id} (onnxruntime) on {args.socket}"


def main(argv: list[str] | None = None) -> None:
    """Load the model, then listen; the socket existing means the engine is ready."""
    p = cli.parser("veil.engines.onnx", __doc__, ["threads"], model_required=True)
    p.add_argument("--max-body-mb", type=int, default=64, help="largest request body (MiB)")
    p.add_argument("--max-elements", type=int, default=16 << 20, help="largest tensor (elements)")
    cli.run(p.parse_args(argv), _load)


if __name__ == "__main__":
    main()
