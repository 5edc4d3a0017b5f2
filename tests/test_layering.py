"""Imports point down the layers (docs: README "Find your way", DESIGN.md "Layout").

Walks the AST of every module under src/veil, including imports inside functions (a lazy import
is still a dependency), and fails on any import that reaches up or sideways across a trust line:

* nothing in the library imports the entry points (``veil.cli``, ``veil.localdeploy``);
* the client side (``veil.client``, ``veil.admin``) never imports worker, coordinator, engines or
  sandbox code: an SDK user must be able to install and audit it alone;
* worker and coordinator do not import each other, nor the client side;
* engines (untrusted processes) import no worker, coordinator or client code;
* the shared core (``veil.wire``, ``veil.errors``, ``veil.ohttp``, ``veil.attest``, ...) imports
  none of the roles above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

ENTRY = {"veil.cli", "veil.localdeploy", "veil.__main__"}
CLIENT_SIDE = {"veil.client", "veil.admin"}
SERVER_SIDE = {"veil.worker", "veil.coordinator", "veil.engines", "veil.sandbox"}
ROLES = CLIENT_SIDE | SERVER_SIDE

#: importer prefix -> prefixes it must never import (besides ENTRY, which no library module may).
FORBIDDEN: dict[str, set[str]] = {
    "veil.client": SERVER_SIDE,
    "veil.admin": SERVER_SIDE,
    "veil.worker": CLIENT_SIDE | {"veil.coordinator"},
    "veil.coordinator": CLIENT_SIDE | {"veil.worker", "veil.engines", "veil.sandbox"},
    "veil.engines": CLIENT_SIDE | {"veil.worker", "veil.coordinator"},
    "veil.sandbox": CLIENT_SIDE | {"veil.worker", "veil.coordinator", "veil.engines"},
    "veil.wire": {"veil"},  # imports nothing of Veil's
    "veil.errors": {"veil"},
    "veil.process": ROLES,
    "veil.ohttp": ROLES,
    "veil.attest": ROLES,
    "veil.sealing": ROLES,
    "veil.manifest": ROLES,
    "veil.attestation": ROLES,
    "veil.keyrelease": ROLES,
    "veil.httputil": ROLES,
}


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from veil import wire` imports the module veil.wire, not just the package.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names] if target == "veil" else []
            found.append((node.lineno, target))
    return [(line, name) for line, name in found if _within(name, "veil")]


def upward_imports(src: Path = SRC) -> list[str]:
    """Every import under ``src/veil`` that breaks the layering rules, as ``module:line -> target``."""
    bad: list[str] = []
    for path in sorted((src / "veil").rglob("*.py")):
        module = _module_name(path, src)
        if any(_within(module, e) for e in ENTRY):
            continue  # the entry points may use anything
        rules = {p for prefix, ps in FORBIDDEN.items() if _within(module, prefix) for p in ps} | ENTRY
        own = ".".join(module.split(".")[:2])  # veil.client for veil.client.transport
        for line, target in _imports(path, module):
            if target == "veil" or _within(target, own):
                continue  # the bare package, and a package's own modules
            if any(_within(target, p) for p in rules):
                bad.append(f"{module}:{line} -> {target}")
    return bad


def test_no_upward_imports() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker is not vacuous: a client module importing the worker, and a library module
    importing the CLI (even lazily, inside a function), are both reported."""
    pkg = tmp_path / "veil"
    (pkg / "client").mkdir(parents=True)
    (pkg / "ohttp").mkdir()
    for p in (pkg, pkg / "client", pkg / "ohttp"):
        (p / "__init__.py").write_text("")
    (pkg / "client" / "transport.py").write_text("from veil.worker.padding import pad_message\n")
    (pkg / "ohttp" / "x.py").write_text("def f():\n    from veil.cli import main\n")
    (pkg / "client" / "ok.py").write_text("from veil import wire\nfrom veil.ohttp import bhttp\nfrom . import transport\n")
    (pkg / "wire.py").write_text("from veil import errors\n")
    assert upward_imports(tmp_path) == [
        "veil.client.transport:1 -> veil.worker.padding",
        "veil.ohttp.x:2 -> veil.cli",
        "veil.wire:1 -> veil.errors",
    ]
