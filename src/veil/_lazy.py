"""Lazy package exports (PEP 562): a package names its public objects without importing their
modules until first use, so ``import veil`` (the CLI's first line) and the sandbox's launch
trampoline stay cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def exports(package: str, homes: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` that loads ``name`` from ``homes[name]`` on first access."""

    def __getattr__(name: str) -> Any:
        if name in homes:
            return getattr(importlib.import_module(homes[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
