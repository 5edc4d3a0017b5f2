"""The ``veil`` executable: runs the typer app, and says which extra to install when a command
needs one that is missing.

``pip install veil`` is the client SDK alone (verify, chat, manifest, evidence, seal, admin).
``veil coordinator``, ``veil worker``, ``veil proxy`` and ``veil up`` need their server stack;
without it they print ``veil coordinator needs the 'server' extra (...): pip install 'veil[server]'``
and exit 1 before doing anything, instead of a traceback (or, for ``veil up``, children dying).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

#: The top-level module of each optional dependency -> the extra that installs it (pyproject's
#: [project.optional-dependencies]; tests/test_packaging.py checks they agree).
EXTRA_OF_MODULE = {
    "fastapi": "server",
    "uvicorn": "server",
    "sqlalchemy": "server",
    "prometheus_client": "server",
    "pyseccomp": "server",
    "starlette": "proxy",
    "llama_cpp": "llamacpp",
    "onnxruntime": "onnx",
    "numpy": "onnx",
    "torch": "transformers",
    "transformers": "transformers",
    "psycopg": "postgres",
    "pynvml": "gpu",
}

_SERVER = ("fastapi", "uvicorn", "sqlalchemy", "prometheus_client")
#: Command -> (the extra it is documented with, the modules it cannot start without).
COMMAND_NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "coordinator": ("server", _SERVER),
    "worker": ("server", (*_SERVER, "pyseccomp")),
    "proxy": ("proxy", ("starlette", "uvicorn")),
    "up": ("local", (*_SERVER, "pyseccomp", "starlette", "llama_cpp")),
}


def _command(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_extra(argv: Sequence[str]) -> tuple[str, str] | None:
    """(extra, first missing module) when the command in ``argv`` cannot start, else None."""
    extra, modules = COMMAND_NEEDS.get(_command(argv) or "", ("", ()))
    missing = next((m for m in modules if not _installed(m)), None)
    return (extra, missing) if missing else None


def _refuse(argv: Sequence[str], extra: str, module: str) -> None:
    command = " ".join(filter(None, ["veil", _command(argv)]))
    print(
        f"{command} needs the {extra!r} extra (module {module!r} is not installed): pip install 'veil[{extra}]'", file=sys.stderr
    )
    raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" not in args and (lack := missing_extra(args)):
        _refuse(args, *lack)
    try:
        from veil.cli.main import app

        app(args=args, prog_name="veil")
    except ModuleNotFoundError as err:  # a path COMMAND_NEEDS does not foresee (an engine's runtime)
        top = (err.name or "").split(".")[0]
        if top not in EXTRA_OF_MODULE:
            raise
        _refuse(args, EXTRA_OF_MODULE[top], top)
