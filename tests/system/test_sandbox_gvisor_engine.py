"""The real llama.cpp engine (SmolLM2) starts and answers under the gvisor profile.

runsc creates the engine's Unix socket on the host (``--host-uds=create``) and then refuses
``stat``/``chmod``/``unlink`` on it from inside (EPERM); ``bind_unix_socket`` tolerates that because
the umask at ``bind()`` already gives the socket its mode. This test checks that claim from the
host side too: the socket runsc created is owner-only (0600) in a 0700 directory.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import httpx
import pytest

from veil.sandbox import SandboxError, SandboxProfile, check_enforceable

pytestmark = pytest.mark.slow


def _require_gvisor() -> SandboxProfile:
    profile = SandboxProfile(name="gvisor")
    try:
        check_enforceable(profile)
    except SandboxError as exc:
        if "gvisor" in os.environ.get("VEIL_REQUIRE_SANDBOX", "").split(","):
            pytest.fail(f"gvisor required by VEIL_REQUIRE_SANDBOX but refused: {exc}")
        pytest.skip(f"gvisor cannot run here: {exc}")
    return profile


def test_real_llamacpp_engine_serves_inside_gvisor() -> None:
    pytest.importorskip("llama_cpp")
    from veil.engines.launcher import EngineProcess
    from veil.engines.models import default_model_path  # the bundled GGUF, without its `llm` package

    profile = _require_gvisor()
    model = default_model_path()
    # A tmpfs (/run) as docs/sandbox.md advises; mkdtemp makes the directory 0700.
    base = "/run" if os.access("/run", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="veil-gvisor-engine-", dir=base) as sock_dir:
        assert stat.S_IMODE(os.stat(sock_dir).st_mode) == 0o700
        sock = Path(sock_dir) / "engine.sock"
        engine = EngineProcess(sock, model, sandbox=profile, model_id="smollm2", n_ctx=256, threads=1, startup_timeout=180)
        with engine:
            # Created by runsc's gofer under the engine's umask: owner-only without any chmod.
            assert stat.S_ISSOCK(sock.lstat().st_mode)
            assert stat.S_IMODE(sock.lstat().st_mode) == 0o600
            transport = httpx.HTTPTransport(uds=str(sock))
            with httpx.Client(transport=transport, base_url="http://engine", timeout=120) as client:
                models = client.get("/v1/models").json()
                chat = client.post(
                    "/v1/chat/completions",
                    json={
                        "messages": [{"role": "user", "content": "Say hello."}],
                        "max_tokens": 8,
                        "temperature": 0,
                    },
                )
            log = engine.log_text()
        assert [m["id"] for m in models["data"]] == ["smollm2"], models
        assert chat.status_code == 200, chat.text
        body = chat.json()
        assert body["choices"][0]["message"]["content"].strip(), body
        assert body["usage"]["completion_tokens"] > 0
        assert log == "engine: serving"  # fixed messages only, never the text
        # Nothing the engine made in the socket directory outlives it (the launcher cleans up).
        assert os.listdir(sock_dir) == []
