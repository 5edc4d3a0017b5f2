"""The walking skeleton end to end: `veil up` processes, the real model, verified and encrypted
chat through the SDK, the CLI and the local proxy with the official `openai` SDK — and no
plaintext prompt or answer anywhere on disk afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from veil.client.freshness import AsyncReverifier
from veil.client.policy import ClientPolicy
from veil.client.proxy import create_proxy_app
from veil.client.sdk import Client
from veil.client.verify import verify_coordinator
from veil.localdeploy import LocalDeployment
from veil.testing import ServerThread, free_port

pytestmark = pytest.mark.slow

CANARY = f"CANARY-{uuid.uuid4().hex}"
SANDBOX = os.environ.get("VEIL_TEST_SANDBOX", "bubblewrap")


# every simulated twin runs the whole flow (`veil up --platform ...`): the same tests on each
REFUSED_MEASUREMENT = {"sim-snp": "snp.measurement_mismatch", "sim-tdx": "tdx.mrtd_not_allowed"}


@pytest.fixture(scope="module", params=sorted(REFUSED_MEASUREMENT))
def deployment(request, tmp_path_factory):
    state = tmp_path_factory.mktemp("veil-state")
    dep = LocalDeployment(state, coordinator_port=free_port(), worker_port=free_port(), sandbox=SANDBOX, platform=request.param)
    dep.start()
    yield dep
    dep.stop()


@pytest.fixture(scope="module")
def client(deployment):
    with Client(deployment.policy_path) as c:
        yield c


def _messages(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_client_verifies_simulated_deployment(client, deployment) -> None:
    assert client.simulated
    claims = client.attestation.verdict.claims
    assert claims.platform == deployment.platform and claims.simulated
    checks = [name for name, _ in client.attestation.checks]  # what the verifier ran, not fixed text
    assert "revocation (CRL)" in checks and "binding" in checks
    manifest = client.attestation.manifest.manifest
    assert manifest.sandbox.profile == SANDBOX
    assert [m.name for m in manifest.models] == ["smollm2-135m-instruct"]


def test_chat_non_streaming(client) -> None:
    resp = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=_messages(f"Say hello. {CANARY}"), max_tokens=16
    )
    assert resp.choices[0].message.content
    assert resp.usage is None or resp.usage.completion_tokens > 0


def test_chat_streaming_yields_tokens_incrementally(client) -> None:
    stream = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=_messages(f"Count to five. {CANARY}"), max_tokens=24, stream=True
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 3, pieces
    assert "".join(pieces).strip()


def test_async_client_streams(deployment) -> None:
    import asyncio

    import veil

    async def run() -> list[str]:
        async with veil.AsyncClient(deployment.policy_path) as ac:
            assert ac.simulated
            stream = await ac.chat.completions.create(
                model="smollm2-135m-instruct", messages=_messages(f"Hello {CANARY}"), max_tokens=12, stream=True
            )
            return [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]

    assert len(asyncio.run(run())) > 1


def test_verify_json_shows_worker_requirements(client, deployment) -> None:
    report = client.attestation.to_json()
    workers = report["workers"]
    assert workers and workers[0]["platform"] == deployment.platform and workers[0]["require_gpu"] is False
    # what this client lets the manifest admit: `veil up` writes a development policy for its own sandbox
    assert report["admission"]["sandbox_profiles"] == [SANDBOX] and report["admission"]["trust_simulated"] is True
    assert f"coordinator runs on {deployment.platform}" in report["simulated_parts"]
    assert f"workers on {deployment.platform}" in report["simulated_parts"]


def test_models_endpoint(client) -> None:
    ids = [m.id for m in client.models.list()]
    assert "smollm2-135m-instruct" in ids


def test_openai_sdk_through_local_proxy(deployment) -> None:
    with ServerThread(create_proxy_app(AsyncReverifier(ClientPolicy.load(deployment.policy_path)))) as proxy:
        oa = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
        resp = oa.chat.completions.create(model="smollm2-135m-instruct", messages=_messages(f"Hi {CANARY}"), max_tokens=12)
        assert resp.choices[0].message.content
        chunks = list(
            oa.chat.completions.create(
                model="smollm2-135m-instruct", messages=_messages(f"Hi again {CANARY}"), max_tokens=12, stream=True
            )
        )
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
        info = httpx.get(f"{proxy.url}/veil/verification").json()
        assert info["status"] == "verified" and info["verification"]["simulated"] is True


def test_cli_verify_and_chat_use_the_local_policy(deployment) -> None:
    env = {**os.environ, "VEIL_STATE_DIR": str(deployment.state_dir)}
    out = subprocess.run([sys.executable, "-m", "veil", "verify", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "accept" and report["simulated"] is True
    assert report["claims"]["platform"] == deployment.platform
    readable = subprocess.run([sys.executable, "-m", "veil", "verify"], env=env, capture_output=True, text=True, timeout=120)
    assert readable.returncode == 0 and "SIMULATED" in readable.stdout and "client accepts" in readable.stdout
    chat = subprocess.run(
        [sys.executable, "-m", "veil", "chat", "--max-tokens", "8", f"hello {CANARY}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert chat.returncode == 0, chat.stderr
    assert "SIMULATED" in chat.stdout + chat.stderr


def test_cli_refuses_a_policy_pinning_another_measurement(deployment, tmp_path) -> None:
    policy = json.loads(deployment.policy_path.read_text())
    policy["coordinator"][0]["measurements"] = ["00" * 48]
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps(policy))
    out = subprocess.run(
        [sys.executable, "-m", "veil", "verify", "--json", "--policy", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert json.loads(out.stdout)["reason"] == REFUSED_MEASUREMENT[deployment.platform]


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    """Files under ``root`` (or ``root`` itself) holding ``needle``; entries that vanish while we
    look (other processes' temporary files) are skipped."""
    hits = []
    paths = [root] + [Path(d) / f for d, _, files in os.walk(root) for f in files]  # walk ignores errors
    for path in paths:
        try:
            if path.is_file() and not path.is_socket() and needle in path.read_bytes():
                hits.append(path)
        except OSError:
            continue
    return hits


def test_tenant_add_publishes_only_the_key_hash(deployment) -> None:
    import hashlib

    env = {**os.environ, "VEIL_STATE_DIR": str(deployment.state_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "veil", "tenant", "add", "acme", "--rpm", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    api_key = out.stdout.strip().splitlines()[-1]
    assert api_key.startswith("veil-")
    manifest = httpx.get(f"{deployment.coordinator_url}/v1/manifest").json()["manifest"]
    assert manifest["tenants"] == [
        {
            "id": "acme",
            "key_sha256": hashlib.sha256(api_key.encode()).hexdigest(),
            "requests_per_minute": 5,
            "tokens_per_minute": None,
        }
    ]
    assert api_key not in json.dumps(manifest)
    # the client still verifies: the new manifest is signed by the admin key it trusts
    assert verify_coordinator(ClientPolicy.load(deployment.policy_path)).manifest.manifest.tenants


def test_weights_are_served_sealed_and_never_written_in_the_clear(deployment, client) -> None:
    """The worker unsealed the weights into a memfd: no plaintext window of them is on disk."""
    import tempfile

    entry = client.attestation.manifest.manifest.models[0]
    assert entry.source and entry.key_id and entry.sealed_sha256
    plain = deployment.model_path.read_bytes()
    windows = [plain[i : i + 64] for i in (len(plain) // 3, len(plain) // 2, 2 * len(plain) // 3)]
    roots = [deployment.state_dir, Path("/dev/shm")]
    roots += [p for p in Path(tempfile.gettempdir()).iterdir() if p.name.startswith(("veil", "tmp"))]
    for root in roots:
        for w in windows:
            assert _files_containing(root, w) == [], f"a plaintext window of the weights is in {root}"


def test_zz_canary_never_reaches_disk(deployment) -> None:
    """Runs last in this module: every prompt above carried the canary."""
    needle = CANARY.encode()
    hits = _files_containing(deployment.state_dir, needle)
    for path in Path("/tmp").glob("veil-engine-*"):
        hits += _files_containing(path, needle)
    assert hits == [], f"plaintext canary found in {hits}"
    logs = "".join(p.read_text(errors="replace") for p in (deployment.state_dir / "logs").glob("*.log"))
    assert CANARY not in logs
