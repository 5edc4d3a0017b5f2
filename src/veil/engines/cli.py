"""One command line for every engine: ``python -m veil.engines.<name> --socket PATH [flags]``.

Each engine declares the flags it uses (``--n-ctx``, ``--threads``, ``--device`` and its own); every
engine takes ``--socket``, ``--model``, ``--model-id``, ``--socket-mode`` and ``--parent-pid``. A flag
an engine would ignore is refused by argparse, so a launcher can never believe it set something
that had no effect. Start-up is the same everywhere: die with the parent, load the model (a
failure names the operator's file, never a request), then serve on the owner-only socket.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from veil.engines.serving import log, serve, start_up

#: The optional flags an engine may declare, with how they parse.
COMMON_FLAGS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "n_ctx": (("--n-ctx",), {"type": int, "default": 2048, "help": "context window in tokens"}),
    "threads": (("--threads",), {"type": int, "default": os.cpu_count() or 1, "help": "CPU threads"}),
    "device": (("--device",), {"default": "cpu", "help": "torch device, e.g. cpu or cuda"}),
}


def parser(
    prog: str, description: str | None, flags: Sequence[str] = (), *, model_required: bool = False
) -> argparse.ArgumentParser:
    """The engine's argument parser: the flags every engine takes plus the ``flags`` it declares."""
    p = argparse.ArgumentParser(
        prog=f"python -m {prog}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--socket", type=Path, required=True, help="Unix socket path to serve on")
    p.add_argument("--model", required=model_required, help="model file or directory, or a memfd path such as /proc/self/fd/0")
    p.add_argument("--model-id", help="name under /v1/models (default: from the model's name)")
    p.add_argument("--socket-mode", type=lambda s: int(s, 8), default=0o600, help="socket file mode (octal)")
    p.add_argument("--parent-pid", type=int, help="exit at once if our parent is not this pid")
    for name in flags:
        names, options = COMMON_FLAGS[name]
        p.add_argument(*names, **options)
    return p


def run(args: argparse.Namespace, load: Callable[[argparse.Namespace], tuple[Any, str]]) -> None:
    """Die with the parent, ``load(args)`` -> (ASGI app, banner), then serve until SIGTERM."""
    start_up(args.parent_pid)
    try:
        app, banner = load(args)
    except Exception as exc:  # no request yet: the text is about the operator's own files
        log(f"cannot load model {args.model}: {type(exc).__name__}: {str(exc)[:500]}")
        sys.exit(1)
    serve(app, args.socket, args.socket_mode, banner)
