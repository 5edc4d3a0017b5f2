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

import httpx
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
            assert "serving" in eng.log_text()  # unconfined: the raw output, in memory only
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
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
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
            tmp_path / "m.sock",
            model=f"/proc/self/fd/{fd}",
            model_id="smollm2-memfd",
            pass_fds=(fd,),
            threads=1,
            n_ctx=256,
        )
        with eng:
            transport = httpx.HTTPTransport(uds=str(eng.socket_path))
            with httpx.Client(transport=transport, base_url="http://engine") as c:
                assert c.get("/v1/models").json()["data"][0]["id"] == "smollm2-memfd"
    finally:
        os.close(fd)


def _require(profile):
    from veil.sandbox import SandboxError, check_enforceable

    try:
        check_enforceable(profile)
    except SandboxError as exc:
        pytest.skip(str(exc))


def test_confined_start_failure_withholds_the_engine_output(tmp_path: Path) -> None:
    """A confined engine's output is untrusted: a failed start shows fixed messages, not its text."""
    from veil.sandbox import SandboxProfile

    profile = SandboxProfile()
    _require(profile)
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    missing = tmp_path / "secret-prompt-in-the-name.gguf"
    missing.write_bytes(b"not a model")
    eng = EngineProcess(sock_dir / "s.sock", model=missing, sandbox=profile, threads=1)
    with pytest.raises(EngineStartError) as err:
        eng.start()
    assert err.value.reason == "engine.start_failed"
    assert "withheld" in err.value.message
    assert "secret-prompt" not in err.value.message and "Traceback" not in err.value.message
    assert eng.pid is None  # a failed start leaves nothing running


def test_restart_under_another_profile(tmp_path: Path) -> None:
    """restart(sandbox=...) replaces the engine: a new process, confined by the new profile."""
    from veil.sandbox import SandboxError, SandboxProfile

    first = SandboxProfile(landlock=False)
    second = SandboxProfile()
    _require(second)
    sock_dir = tmp_path / "sock"
    sock_dir.mkdir()
    with EngineProcess(sock_dir / "r.sock", sandbox=first, threads=1, n_ctx=256) as eng:
        old_pid = eng.pid
        assert eng.profile == first
        eng.restart(second)
        assert eng.profile == second and eng.pid != old_pid and not _alive(old_pid)
        transport = httpx.HTTPTransport(uds=str(eng.socket_path))
        with httpx.Client(transport=transport, base_url="http://engine") as c:
            assert c.get("/health").status_code == 200
        # A profile this host cannot enforce: refused, and no engine keeps running under the old one.
        with pytest.raises(SandboxError) as refused:
            eng.restart(SandboxProfile(name="gvisor", allow_gpu=True))
        assert refused.value.reason == "sandbox.unavailable"
        assert eng.pid is None and eng.profile is None
