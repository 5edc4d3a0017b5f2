"""The ONNX Runtime engine: a tiny MatMul+Add+Relu model built here, checked against numpy.

Fast checks drive the ASGI app in-process; the slow ones run the real engine process on its
Unix socket, including loading the model from a memfd the way unsealed weights arrive.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")

from fastapi.testclient import TestClient  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from veil.engines.launcher import ENGINE_BASE_URL, EngineProcess  # noqa: E402
from veil.engines.onnx import OnnxBackend, create_app, is_fd_path  # noqa: E402
from veil.engines.onnx_api import (  # noqa: E402
    Limits,
    TensorSpec,
    array_to_tensor,
    decode_inputs,
    tensor_to_array,
)

CANARY = "VEIL-CANARY-0b5e-onnx-input-must-not-be-logged"
RNG = np.random.default_rng(7)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def _model_bytes() -> bytes:
    """y = Relu(x @ W + B) for x: float32[N, 4]; k2 = k * k for k: int64[2]."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
            helper.make_node("Mul", ["k", "k"], ["k2"]),
        ],
        "veil_tiny",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [2]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("k2", TensorProto.INT64, [2]),
        ],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def _expected(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0)


def _body(x: np.ndarray, k: np.ndarray, encoding: str = "base64", **extra: Any) -> dict[str, Any]:
    return {
        "inputs": {
            "x": array_to_tensor(x, encoding),  # type: ignore[arg-type]
            "k": array_to_tensor(k, encoding),
        },
        **extra,
    }  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    path.write_bytes(_model_bytes())
    return path


@pytest.fixture(scope="module")
def app_client(model_file: Path) -> Iterator[TestClient]:
    backend = OnnxBackend(model_file, "tiny", threads=1)
    limits = Limits(max_body_bytes=1 << 20, max_elements=10_000)
    with TestClient(create_app(backend, limits)) as c:
        yield c


# --- wire format ------------------------------------------------------------------------------


def test_tensor_round_trip_both_encodings() -> None:
    for arr in (
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array([True, False]),
        np.array([[1, -2]], dtype=np.int64),
        np.array(3.5, dtype=np.float16),
    ):
        for enc in ("base64", "list"):
            back = tensor_to_array(array_to_tensor(arr, enc))  # type: ignore[arg-type]
            assert back.dtype == arr.dtype and back.shape == arr.shape
            np.testing.assert_array_equal(back, arr)


def test_base64_is_little_endian_bytes() -> None:
    t = array_to_tensor(np.array([1], dtype=np.int32))
    assert base64.b64decode(t["data"]) == b"\x01\x00\x00\x00"


def test_decode_refusals() -> None:
    specs = [TensorSpec("x", "float32", (None, 4))]
    good = {"dtype": "float32", "shape": [1, 4], "data": [[1, 2, 3, 4]]}
    cases = [
        ({"inputs": {}}, "invalid_request"),
        ({"inputs": {"x": good, CANARY: good}}, "unknown_input"),
        ({"inputs": {"x": {**good, "dtype": "int64"}}}, "dtype_mismatch"),
        ({"inputs": {"x": {**good, "dtype": "complex64"}}}, "unsupported_dtype"),
        ({"inputs": {"x": {**good, "shape": [1, 5]}}}, "shape_mismatch"),
        ({"inputs": {"x": {**good, "shape": [4]}}}, "shape_mismatch"),
        ({"inputs": {"x": {**good, "shape": [1, -4]}}}, "invalid_shape"),
        ({"inputs": {"x": {**good, "data": [[1, 2, 3]]}}}, "shape_mismatch"),
        ({"inputs": {"x": {**good, "data": [[1, 2, 3, 4], [5]]}}}, "invalid_data"),
        ({"inputs": {"x": {**good, "data": [[1, 2], [3, 4]]}}}, "shape_mismatch"),
        ({"inputs": {"x": {**good, "data": "!!not base64!!"}}}, "invalid_data"),
        ({"inputs": {"x": {**good, "data": base64.b64encode(b"\0" * 12).decode()}}}, "shape_mismatch"),
        ({"inputs": {"x": {**good, "data": [[CANARY, 2, 3, 4]]}}}, "invalid_data"),
        ({"inputs": {"x": {**good, "shape": [100_000, 4]}}}, "tensor_too_large"),
    ]
    from veil.engines.openai_api import EngineAPIError

    for body, code in cases:
        with pytest.raises(EngineAPIError) as err:
            decode_inputs(body, specs, Limits(max_elements=100_000))
        assert err.value.code == code, (body, err.value.message)
        assert CANARY not in err.value.message
    missing = [TensorSpec("x", "float32", (None, 4)), TensorSpec("k", "int64", (2,))]
    with pytest.raises(EngineAPIError) as err:
        decode_inputs({"inputs": {"x": good}}, missing)
    assert err.value.code == "missing_input" and "k" in err.value.message


def test_fd_paths_are_recognised() -> None:
    assert is_fd_path("/proc/self/fd/7") and is_fd_path("/dev/fd/3")
    assert is_fd_path("/proc/1234/fd/5")
    assert not is_fd_path("/models/tiny.onnx") and not is_fd_path("/proc/self/fd/../x")


def test_backend_loads_from_memfd() -> None:
    fd = os.memfd_create("veil-model", os.MFD_CLOEXEC)
    try:
        os.write(fd, _model_bytes())
        backend = OnnxBackend(f"/proc/self/fd/{fd}", "mem", threads=1)
        x = RNG.standard_normal((2, 4)).astype(np.float32)
        (y,) = backend.session.run(["y"], {"x": x, "k": np.array([1, 2], dtype=np.int64)})
        np.testing.assert_allclose(y, _expected(x), rtol=1e-5, atol=1e-6)
    finally:
        os.close(fd)


# --- HTTP app in-process ----------------------------------------------------------------------


def test_models_lists_signature(app_client: TestClient) -> None:
    (m,) = app_client.get("/v1/models").json()["data"]
    assert m["id"] == "tiny"
    assert m["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 4]}, {"name": "k", "dtype": "int64", "shape": [2]}]
    assert [o["name"] for o in m["outputs"]] == ["y", "k2"]
    assert app_client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("encoding", ["base64", "list"])
def test_run_matches_numpy(app_client: TestClient, encoding: str) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    k = np.array([3, -7], dtype=np.int64)
    r = app_client.post("/v1/run", json=_body(x, k, encoding, output_encoding=encoding))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert out["y"]["dtype"] == "float32" and out["y"]["shape"] == [5, 3]
    np.testing.assert_allclose(tensor_to_array(out["y"]), _expected(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(tensor_to_array(out["k2"]), k * k)


def test_output_selection(app_client: TestClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    r = app_client.post("/v1/run", json=_body(x, np.array([2, 2]), outputs=["k2"]))
    assert list(r.json()["outputs"]) == ["k2"]
    r = app_client.post("/v1/run", json=_body(x, np.array([2, 2]), outputs=["nope"]))
    assert r.json()["error"]["code"] == "unknown_output"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_request"),
        (
            b'{"inputs": {"x": {"dtype": "float64", "shape": [1, 4], "data": [[1,2,3,4]]},'
            b' "k": {"dtype": "int64", "shape": [2], "data": [1, 2]}}}',
            400,
            "dtype_mismatch",
        ),
        (b'{"model": "other", "inputs": {}}', 404, "model_not_found"),
        (b'{"inputs": {"x": 1}, "output_encoding": "hex"}', 400, "invalid_request"),
        (b'{"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "data": "' + b"A" * 2_000_000 + b'"}}}', 413, "body_too_large"),
    ],
)
def test_bad_requests_get_openai_errors(app_client: TestClient, body: bytes, status: int, code: str) -> None:
    r = app_client.post("/v1/run", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["type"] in ("invalid_request_error", "server_error")
    assert err["message"]


def test_unknown_path_is_openai_404(app_client: TestClient) -> None:
    r = app_client.post("/v1/chat/completions", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# --- the real engine process on its Unix socket -----------------------------------------------


@pytest.mark.slow
def test_engine_process_over_unix_socket(model_file: Path, tmp_path: Path) -> None:
    sock = tmp_path / "onnx.sock"
    with EngineProcess(sock, model_file, engine_module="veil.engines.onnx", threads=1, startup_timeout=60) as eng:
        assert (sock.stat().st_mode & 0o777) == 0o600
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url=ENGINE_BASE_URL, timeout=30) as c:
            x = RNG.standard_normal((3, 4)).astype(np.float32)
            r = c.post("/v1/run", json=_body(x, np.array([5, 6])))
            assert r.status_code == 200, r.text
            y = tensor_to_array(r.json()["outputs"]["y"])
            np.testing.assert_allclose(y, _expected(x), rtol=1e-5, atol=1e-6)
            # Send the canary every way we can, good and bad; it must never reach the log.
            canary_f = np.frombuffer(CANARY.encode()[:32], dtype=np.float32).reshape(2, 4)
            c.post("/v1/run", json=_body(canary_f, np.array([1, 2])))
            c.post("/v1/run", json={"inputs": {CANARY: {"dtype": "float32", "shape": [1], "data": [1.0]}}})
            c.post("/v1/run", json={"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "data": [[CANARY, 1, 2, 3]]}}})
            c.post("/v1/run", content=f'{{"inputs": "{CANARY}'.encode())
            c.post(f"/v1/{CANARY}", json={})
        time.sleep(0.2)
        log = eng.log_text()
    assert "serving tiny (onnxruntime)" in log
    assert CANARY not in log and "Traceback" not in log


@pytest.mark.slow
def test_engine_process_loads_model_from_memfd(tmp_path: Path) -> None:
    """Unsealed weights live in a memfd: the engine gets /dev/fd/N and never a file on disk."""
    fd = os.memfd_create("veil-model")
    os.write(fd, _model_bytes())
    sock = tmp_path / "m.sock"
    cmd = [
        sys.executable,
        "-m",
        "veil.engines.onnx",
        "--model",
        f"/dev/fd/{fd}",
        "--socket",
        str(sock),
        "--threads",
        "1",
        "--parent-pid",
        str(os.getpid()),
    ]
    proc = subprocess.Popen(cmd, pass_fds=[fd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(fd)
    try:
        transport = httpx.HTTPTransport(uds=str(sock), retries=3)
        with httpx.Client(transport=transport, base_url=ENGINE_BASE_URL, timeout=30) as c:
            deadline = time.monotonic() + 60
            while not sock.exists():
                assert proc.poll() is None, proc.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline
                time.sleep(0.05)
            (m,) = c.get("/v1/models").json()["data"]
            assert m["id"] == "onnx-model"
            x = np.eye(4, dtype=np.float32)
            r = c.post("/v1/run", json=_body(x, np.array([1, 1]), output_encoding="list"))
            np.testing.assert_allclose(tensor_to_array(r.json()["outputs"]["y"]), _expected(x), rtol=1e-5, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(10)
