"""The vLLM engine: the command line Veil builds (always), and a real run (only with vLLM + GPU)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from veil.engines import vllm
from veil.engines.launcher import ENGINE_BASE_URL, EngineProcess

EXE = ["/opt/venv/bin/vllm"]


def test_command_serves_on_the_unix_socket_with_logging_off() -> None:
    cmd = vllm.build_command("/models/m", "/run/veil/e.sock", model_id="m", max_model_len=4096, version="0.11.0", executable=EXE)
    assert cmd[:5] == [*EXE, "serve", "/models/m", "--uds", "/run/veil/e.sock"]
    assert cmd[cmd.index("--served-model-name") + 1] == "m"
    assert cmd[cmd.index("--max-model-len") + 1] == "4096"
    assert "--no-enable-log-requests" in cmd and "--disable-log-requests" not in cmd
    assert "--disable-uvicorn-access-log" in cmd
    assert not any(a in cmd for a in ("--host", "--port", "--trust-remote-code"))


@pytest.mark.parametrize(
    ("version", "flag"),
    [
        ("0.9.2", "--disable-log-requests"),
        ("0.10.1.1", "--disable-log-requests"),
        ("0.10.2", "--no-enable-log-requests"),
        ("0.10.2rc1+cu128", "--no-enable-log-requests"),
        ("0.12.0", "--no-enable-log-requests"),
        (None, "--no-enable-log-requests"),
    ],
)
def test_request_logging_flag_follows_the_version(version: str | None, flag: str) -> None:
    assert vllm.request_logging_off(version) == [flag]


def test_extra_args_pass_through_but_privacy_flags_are_refused() -> None:
    ok = vllm.build_command(
        "m", "s", version="0.11.0", executable=EXE, extra_args=["--gpu-memory-utilization", "0.5", "--enforce-eager"]
    )
    assert ok[-3:] == ["--gpu-memory-utilization", "0.5", "--enforce-eager"]
    for bad in (
        ["--enable-log-requests"],
        ["--enable-log-outputs"],
        ["--port=8000"],
        ["--host", "0.0.0.0"],
        ["--trust-remote-code"],
    ):
        with pytest.raises(vllm.VllmConfigError):
            vllm.build_command("m", "s", executable=EXE, extra_args=bad)


def test_tool_parser_follows_the_models_chat_template(tmp_path: Path) -> None:
    """vLLM's auto tool choice is switched on with the parser the template's syntax needs, read
    from the model directory (never the model's name); a template without tools gets none."""
    from tiny_models import HERMES_TEMPLATE

    def model_dir(name: str, config: object = None, jinja: str | None = None) -> Path:
        root = tmp_path / name
        root.mkdir()
        if config is not None:
            (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": config}))
        if jinja is not None:
            (root / "chat_template.jinja").write_text(jinja)
        return root

    def parser(cmd: list[str]) -> str | None:
        return cmd[cmd.index("--tool-call-parser") + 1] if "--tool-call-parser" in cmd else None

    hermes = vllm.build_command(model_dir("qwen-like", HERMES_TEMPLATE), "s", version="0.11.0", executable=EXE)
    assert "--enable-auto-tool-choice" in hermes and parser(hermes) == "hermes"
    mistral = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
    named = [{"name": "default", "template": "{{ messages }}"}, {"name": "tool_use", "template": mistral}]
    assert parser(vllm.build_command(model_dir("mistral-like", named), "s", executable=EXE)) == "mistral"
    assert parser(vllm.build_command(model_dir("jinja", jinja=HERMES_TEMPLATE), "s", executable=EXE)) == "hermes"
    plain = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"
    for bare in (model_dir("chatml", plain), model_dir("no-template", None), tmp_path / "missing"):
        assert "--enable-auto-tool-choice" not in vllm.build_command(bare, "s", executable=EXE)
    chosen = vllm.build_command(
        tmp_path / "qwen-like", "s", executable=EXE, extra_args=["--enable-auto-tool-choice", "--tool-call-parser", "pythonic"]
    )
    assert parser(chosen) == "pythonic" and chosen.count("--tool-call-parser") == 1


def test_environment_switches_telemetry_off() -> None:
    env = vllm.build_env({"PATH": "/bin", "VLLM_NO_USAGE_STATS": "0"})
    assert env["PATH"] == "/bin"
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_socket_directory_must_be_private(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    vllm.check_socket_dir(private / "e.sock")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    with pytest.raises(vllm.VllmConfigError):
        vllm.check_socket_dir(shared / "e.sock")


def test_cli_takes_the_engine_process_flags(tmp_path: Path) -> None:
    """The argv EngineProcess sends, plus pass-through flags, becomes the expected vllm argv."""
    eng = EngineProcess(
        tmp_path / "e.sock",
        tmp_path / "my-model",
        engine_module="veil.engines.vllm",
        n_ctx=1024,
        extra_args=["--gpu-memory-utilization", "0.4"],
    )
    out = subprocess.run([*eng.command(), "--print-command"], capture_output=True, text=True, timeout=60, check=True)
    printed = json.loads(out.stdout)
    argv = printed["argv"]
    assert argv[argv.index("serve") + 1] == str(tmp_path / "my-model")
    assert argv[argv.index("--uds") + 1] == str(tmp_path / "e.sock")
    assert argv[argv.index("--served-model-name") + 1] == "my-model"
    assert argv[argv.index("--max-model-len") + 1] == "1024"
    assert argv[-2:] == ["--gpu-memory-utilization", "0.4"]
    assert printed["env"]["VLLM_NO_USAGE_STATS"] == "1"
    refused = subprocess.run([*eng.command(), "--enable-log-requests"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "not allowed" in refused.stderr
    ignored = subprocess.run([*eng.command(), "--threads", "4"], capture_output=True, text=True, timeout=60)
    assert ignored.returncode == 2 and "--threads" in ignored.stderr  # a flag vLLM would ignore


# --- a real vLLM server: needs vLLM and an NVIDIA GPU (none on the development machine) ---------


def _gpu_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


needs_vllm_gpu = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not _gpu_present(),
    reason="vLLM runs only with vLLM installed and a CUDA GPU present",
)

CANARY = "VEIL-CANARY-91c3-vllm-prompt-must-not-be-logged"


@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    spec = importlib.util.spec_from_file_location("tiny_builder", Path(__file__).with_name("test_engine_transformers.py"))
    assert spec and spec.loader
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    base = tmp_path_factory.mktemp("vllm")
    os.chmod(base, 0o700)
    # head_dim 64: the smallest size every vLLM attention backend accepts.
    model = builder.build_tiny_model(base / "tiny-llama", hidden_size=128, heads=2)
    with EngineProcess(
        base / "engine.sock",
        model,
        engine_module="veil.engines.vllm",
        n_ctx=128,
        extra_args=["--gpu-memory-utilization", "0.25", "--enforce-eager"],
        startup_timeout=900,
    ) as eng:
        yield eng


@pytest.mark.slow
@needs_vllm_gpu
def test_vllm_serves_openai_on_the_socket(vllm_engine: EngineProcess) -> None:
    assert (vllm_engine.socket_path.stat().st_mode & 0o077) == 0
    transport = httpx.HTTPTransport(uds=str(vllm_engine.socket_path))
    with httpx.Client(transport=transport, base_url=ENGINE_BASE_URL, timeout=120) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["tiny-llama"]
        r = c.post(
            "/v1/chat/completions",
            json={"model": "tiny-llama", "max_tokens": 4, "messages": [{"role": "user", "content": CANARY}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] > 0
        # Veil's FIM middleware runs inside vLLM: this tiny Llama has no FIM tokens, so a refusal.
        fim = c.post("/v1/completions", json={"model": "tiny-llama", "prompt": "a", "suffix": "b", "max_tokens": 2})
        assert fim.status_code == 400 and fim.json()["error"]["code"] == "unsupported_suffix"
        body = {"model": "tiny-llama", "prompt": CANARY, "max_tokens": 4, "stream": True}
        with c.stream("POST", "/v1/completions", json=body) as s:
            lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
    time.sleep(0.5)
    log = vllm_engine.log_text()
    assert "serving tiny-llama (vllm" in log
    assert CANARY not in log
