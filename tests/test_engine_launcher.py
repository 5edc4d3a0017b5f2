"""EngineProcess life cycle: start-up failures are explained, stop is clean, orphans die."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from veil.engines.launcher import EngineProcess, EngineStartError, engine_client

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_start_failure_shows_stderr_tail(tmp_path: Path) -> None:
    eng = EngineProcess(tmp_path / "s.sock", model=tmp_path / "missing.gguf", threads=1)
    with pytest.raises(EngineStartError) as err:
        eng.start()
    assert err.value.reason == "engine.start_failed"
    assert "exited with status" in err.value.message
    assert "missing.gguf" in err.value.message  # the engine's own stderr, shown to the operator
    eng.stop()


def test_async_start_client_and_sigterm_stop(tmp_path: Path) -> None:
    sock = tmp_path / "a.sock"

    async def scenario() -> int | None:
        eng = EngineProcess(sock, threads=2, n_ctx=512)
        async with eng:
            async with await engine_client(eng.socket_path) as client:
                r = await client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
                assert r.status_code == 200
            assert eng.log_path is not None and eng.log_path.exists()
            return eng.pid

    pid = asyncio.run(scenario())
    assert pid is not None and not _alive(pid)
    assert not sock.exists()  # the engine removes its socket on SIGTERM


def test_engine_dies_with_its_parent(tmp_path: Path) -> None:
    """SIGKILL the process that launched the engine: PR_SET_PDEATHSIG must take the engine down."""
    sock = tmp_path / "p.sock"
    parent_code = textwrap.dedent(
        f"""
        import sys, time
        from veil.engines.launcher import EngineProcess
        eng = EngineProcess({str(sock)!r}, threads=1, n_ctx=256).start()
        print(eng.pid, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        engine_pid = int(parent.stdout.readline())
        assert _alive(engine_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(engine_pid)
    finally:
        parent.kill()
        parent.wait()


def test_model_from_a_memfd(tmp_path: Path) -> None:
    """Weights handed over as an inherited memfd, the way the worker passes unsealed models."""
    import httpx

    from veil.engines.models import default_model_path

    if not hasattr(os, "memfd_create"):
        pytest.skip("memfd_create is Linux-only")
    fd = os.memfd_create("veil-model", 0)
    try:
        with open(default_model_path(), "rb") as src:
            while chunk := src.read(1 << 22):
                os.write(fd, chunk)
        eng = EngineProcess(
            tmp_path / "m.sock", model=f"/proc/self/fd/{fd}", model_id="smollm2-memfd",
            pass_fds=(fd,), threads=1, n_ctx=256,
        )
        with eng:
            transport = httpx.HTTPTransport(uds=str(eng.socket_path))
            with httpx.Client(transport=transport, base_url="http://engine") as c:
                assert c.get("/v1/models").json()["data"][0]["id"] == "smollm2-memfd"
    finally:
        os.close(fd)
