"""BlindAI's flow on Veil: an ONNX model sealed by its owner, its data key released only to an
attested worker, unsealed into memory, run by ONNX Runtime inside the sandbox, and queried with
named tensors through OHTTP — the operator sees neither the model nor the inputs."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from veil import admin  # noqa: E402
from veil.attest.attester import SimSnpAttester  # noqa: E402
from veil.attest.sim import SimPlatform  # noqa: E402
from veil.client.policy import ClientPolicy  # noqa: E402
from veil.client.transport import OhttpTransport  # noqa: E402
from veil.client.verify import verify_coordinator  # noqa: E402
from veil.coordinator.app import create_app  # noqa: E402
from veil.coordinator.state import CoordinatorState  # noqa: E402
from veil.engines.onnx_api import array_to_tensor, tensor_to_array  # noqa: E402
from veil.manifest import (  # noqa: E402
    Manifest,
    ModelEntry,
    ReferenceValues,
    ReleasePolicy,
    SandboxSettings,
    public_key_hex,
    sign_manifest,
)
from veil.sealing import generate_data_key, seal_file  # noqa: E402
from veil.testing import ServerThread, free_port  # noqa: E402

pytestmark = pytest.mark.slow

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
B = np.array([-1.0, 0.0, 1.0], dtype=np.float32)


def _model() -> bytes:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def test_sealed_onnx_model_runs_only_on_the_attested_worker(tmp_path) -> None:
    import hashlib

    sim = SimPlatform.create(tmp_path / "sim")
    owner = Ed25519PrivateKey.generate()
    attester = SimSnpAttester(sim.directory, host_data=bytes.fromhex(public_key_hex(owner)))  # bootstrap key
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(owner))
    model = tmp_path / "model.onnx"
    model.write_bytes(_model())
    key = generate_data_key()
    header = seal_file(model, tmp_path / "model.sealed", key, "onnx-key")
    sealed_sha = hashlib.sha256((tmp_path / "model.sealed").read_bytes()).hexdigest()
    model.unlink()  # from here on, only the sealed file exists on disk

    refs = [ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()])]
    manifest = Manifest(
        coordinator=refs,
        workers=refs,
        admin_keys=[public_key_hex(owner)],
        coordinator_identity=state.identity,
        models=[
            ModelEntry(
                name="tiny-onnx",
                engine="onnxruntime",
                sha256=header.plaintext_sha256,
                source=str(tmp_path / "model.sealed"),
                sealed_sha256=sealed_sha,
                tree_sha256=header.tree_sha256,
                key_id="onnx-key",
            )
        ],
        release_policies={
            "onnx-key": ReleasePolicy(platforms=["sim-snp"], allow_simulated=True, measurements=[attester.measurement.hex()])
        },
        sandbox=SandboxSettings(profile="bubblewrap"),
        trusted_simulation_roots=[sim.root_fingerprint],
    )
    signed = sign_manifest(manifest, [owner], None)
    with ServerThread(create_app(state, attester)) as coord:
        httpx.post(f"{coord.url}/v1/manifest", content=signed.model_dump_json()).raise_for_status()
        port = free_port()
        policy = ClientPolicy(
            coordinator_url=coord.url,
            gateway_url=f"http://127.0.0.1:{port}",
            coordinator=refs,
            manifest_digests=[signed.digest.hex()],
            trust_simulated=True,
            simulation_roots=[sim.root_fingerprint],
        )
        admin.put_secret(policy, owner, "onnx-key", key)  # the owner's key goes only to the attested coordinator
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil",
                "worker",
                "--coordinator",
                coord.url,
                "--port",
                str(port),
                "--sim-dir",
                str(sim.directory),
                "--run-dir",
                str(tmp_path / "run"),
                "--sim-launch-data",
                public_key_hex(owner),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                assert worker.poll() is None, worker.stdout.read().decode(errors="replace")
                try:
                    if httpx.get(f"{policy.gateway_url}/.well-known/ohttp-gateway", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "worker did not come up"
                time.sleep(0.2)
            attested = verify_coordinator(policy)
            with httpx.Client(
                transport=OhttpTransport(attested.key_config, policy.gateway_url), base_url=policy.gateway_url
            ) as client:
                x = np.array([[1, 2, 3, 4], [-4, -3, -2, -1]], dtype=np.float32)
                resp = client.post("/v1/run", json={"inputs": {"x": array_to_tensor(x)}})
                assert resp.status_code == 200, resp.text
                y = tensor_to_array(resp.json()["outputs"]["y"])
                np.testing.assert_allclose(y, np.maximum(x @ W + B, 0), rtol=1e-6)
                bad = client.post("/v1/run", json={"inputs": {"x": array_to_tensor(x.astype(np.float64))}})
                assert bad.status_code == 400 and bad.json()["error"]["code"] == "dtype_mismatch"
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert not (tmp_path / "model.onnx").exists()
    for path in tmp_path.rglob("*"):  # the plaintext model never came back to disk
        if path.is_file() and not path.is_socket():
            assert W.tobytes() not in path.read_bytes(), path
