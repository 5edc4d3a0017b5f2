"""vLLM engine (GPU): vLLM's own OpenAI server, started on a Unix socket with logging kept quiet.

Run as ``python -m veil.engines.vllm --model DIR --socket PATH [--n-ctx N] [-- VLLM-ARGS...]``;
the command line every Veil engine shares (``veil.engines.cli``), so ``EngineProcess(engine_module="veil.engines.vllm")``
works; flags after ``--`` (and unknown ones) go to vLLM, minus those that weaken privacy.

vLLM already serves the OpenAI API (``vllm serve MODEL --uds PATH``), so Veil does not wrap it in a
second HTTP server: this module only builds a safe command line and then *execs* vLLM, after
(1) asking Linux to kill it with the gateway (PR_SET_PDEATHSIG survives exec), (2) setting a umask
so the socket vLLM binds is owner-only, and refusing a socket directory others can enter, (3)
switching off request logging and usage telemetry, and refusing extra flags that undo that.

Tool calling with ``tool_choice: "auto"`` is vLLM's own, which needs its parser named on the
command line: ``build_command`` reads the model directory's chat template and, when it defines
tool calling in a syntax Veil knows (``veil.engines.tool_calls``: ``hermes``, ``mistral``,
``llama3_json``, the names vLLM's parsers share), adds ``--enable-auto-tool-choice
--tool-call-parser NAME``. A model without one gets no parser, and vLLM refuses ``auto`` itself.

Code completion: vLLM refuses ``suffix`` and has no ``/infill``, so the command also loads Veil's
ASGI middleware into vLLM's server (``--middleware``, ``veil.engines.vllm_fim``), which builds the
fill-in-the-middle prompt from the model's own vocabulary and has vLLM complete it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from veil.engines import vllm_fim

#: Environment for vLLM: no usage stats, no Hugging Face hub traffic or telemetry.
VLLM_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

#: Extra vLLM flags refused because they log prompts/outputs, open a TCP port or run model code.
FORBIDDEN_FLAGS = (
    "--enable-log-requests",
    "--no-disable-log-requests",
    "--enable-log-outputs",
    "--host",
    "--port",
    "--trust-remote-code",
    "--otlp-traces-endpoint",
)

#: vLLM 0.10.2 replaced --disable-log-requests with --enable-log-requests/--no-enable-log-requests
#: (off by default); the old flag was removed in 0.12.
_NEW_LOG_FLAG_SINCE = (0, 10, 2)


class VllmConfigError(ValueError):
    """The requested vLLM set-up would weaken Veil's guarantees (or cannot work)."""


def installed_version() -> str | None:
    """The installed vLLM version, or None where vLLM is not installed (e.g. no GPU here)."""
    try:
        return importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def request_logging_off(version: str | None) -> list[str]:
    """The flag that turns request logging off for this vLLM version (newest if unknown)."""
    if version is None or _version_tuple(version) >= _NEW_LOG_FLAG_SINCE:
        return ["--no-enable-log-requests"]
    return ["--disable-log-requests"]


def check_extra_args(extra: Sequence[str]) -> list[str]:
    """Pass-through vLLM flags (e.g. --gpu-memory-utilization), minus any that weaken privacy."""
    for arg in extra:
        name = arg.split("=", 1)[0]
        if name in FORBIDDEN_FLAGS:
            raise VllmConfigError(f"vLLM flag {name} is not allowed inside Veil")
    return list(extra)


def vllm_executable() -> list[str]:
    """``vllm`` beside this interpreter (same virtualenv), else on PATH, else the module form."""
    beside = Path(sys.executable).with_name("vllm")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    if found := shutil.which("vllm"):
        return [found]
    return [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def chat_template_of(model: str | Path) -> str | None:
    """The chat template a Hugging Face model directory ships (``chat_template.jinja``, else
    ``tokenizer_config.json``'s ``chat_template``, the named ``tool_use`` one first), or None."""
    root = Path(model)
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = root / "tokenizer_config.json"
    if not config.is_file():
        return None
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("tool_use") or named.get("default")
    return template if isinstance(template, str) else None


def tool_parser_args(model: str | Path) -> list[str]:
    """vLLM's auto tool choice flags for the syntax the model's chat template defines, if any."""
    from veil.engines.tool_calls import syntax_of

    syntax = syntax_of(chat_template_of(model))
    return ["--enable-auto-tool-choice", "--tool-call-parser", syntax.name] if syntax else []


def build_command(
    model: str | Path,
    socket_path: str | Path,
    *,
    model_id: str | None = None,
    max_model_len: int | None = None,
    version: str | None = None,
    executable: Sequence[str] | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The ``vllm serve`` argv for one model on one Unix socket, request logging off."""
    argv = [*(executable or vllm_executable()), "serve", str(model), "--uds", str(socket_path)]
    if model_id:
        argv += ["--served-model-name", model_id]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    argv += request_logging_off(version)
    argv += ["--disable-uvicorn-access-log", "--uvicorn-log-level", "warning"]
    argv += ["--middleware", vllm_fim.MIDDLEWARE]
    extra = check_extra_args(extra_args)
    if "--tool-call-parser" not in {a.split("=", 1)[0] for a in extra}:  # an operator's choice wins
        argv += tool_parser_args(model)
    return argv + extra


def build_env(base: dict[str, str] | None = None, settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment vLLM runs with: the caller's, plus telemetry and hub access switched off,
    plus ``settings`` (what the FIM middleware reads: :func:`middleware_settings`)."""
    return {**(os.environ if base is None else base), **VLLM_ENV, **(settings or {})}


def middleware_settings(model: str | Path, model_id: str, socket_path: str | Path) -> dict[str, str]:
    """The FIM middleware's settings: vLLM constructs middleware with the app alone."""
    return {
        vllm_fim.ENV_MODEL: str(model),
        vllm_fim.ENV_MODEL_ID: model_id,
        vllm_fim.ENV_SOCKET: str(Path(socket_path).resolve()),
    }


def check_socket_dir(socket_path: str | Path) -> None:
    """Refuse a socket directory that group or others can enter.

    vLLM binds the socket itself, so the umask is our only say over the socket's mode; a private
    directory makes the socket unreachable to other users whatever mode it ends up with.
    """
    parent = Path(socket_path).resolve().parent
    st = parent.stat()
    if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
        raise VllmConfigError(f"socket directory {parent} must be owned by this user with mode 0700")


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    from veil.engines import cli

    p = cli.parser("veil.engines.vllm", __doc__, ["n_ctx"], model_required=True)
    p.add_argument(
        "--print-command", action="store_true", help="print the vLLM argv and environment overrides as JSON, then exit"
    )
    args, extra = p.parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    refused = [a for a in extra if a.split("=", 1)[0] in ("--threads", "--device")]
    if refused:  # a Veil engine flag vLLM would not honour: say so rather than pass it on
        p.error(f"unrecognized arguments: {' '.join(refused)} (vLLM does not take them)")
    return args, extra


def main(argv: list[str] | None = None) -> None:
    """Build the command, lock things down, then replace this process with vLLM."""
    args, extra = _parse_args(argv)
    model_id = args.model_id or Path(args.model).resolve().name
    try:
        cmd = build_command(
            args.model, args.socket, model_id=model_id, max_model_len=args.n_ctx, version=installed_version(), extra_args=extra
        )
    except VllmConfigError as exc:
        print(f"veil-engine: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    settings = middleware_settings(args.model, model_id, args.socket)
    if args.print_command:
        print(json.dumps({"argv": cmd, "env": {**VLLM_ENV, **settings}}))
        return

    from veil.engines.serving import start_up

    start_up(args.parent_pid)
    try:
        check_socket_dir(args.socket)
    except VllmConfigError as exc:
        print(f"veil-engine: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    if args.socket.is_socket():  # stale socket from a dead engine: vLLM's bind() would fail
        args.socket.unlink()
    os.umask(0o077)
    print(f"veil-engine: serving {model_id} (vllm {installed_version() or '?'}) on {args.socket}", file=sys.stderr, flush=True)
    os.execvpe(cmd[0], cmd, build_env(settings=settings))


if __name__ == "__main__":
    main()
