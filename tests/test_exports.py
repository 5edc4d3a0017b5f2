"""Public surface: the top-level ``veil`` names are pinned (as httpx pins its own), and every
package declares what it exports with an ``__all__`` whose names all resolve (ruff's RUF022
keeps each list sorted in phase B of the static gate).

Adding or removing a top-level name is an API change: update ``EXPECTED`` on purpose.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import veil

SRC = Path(__file__).resolve().parents[1] / "src"

EXPECTED = [
    "AsyncClient",
    "AsyncOhttpTransport",
    "AttestedCoordinator",
    "Client",
    "ClientPolicy",
    "OhttpTransport",
    "ParseError",
    "PolicyError",
    "ProtocolError",
    "VeilError",
    "VerificationError",
    "__version__",
]


def _packages() -> list[str]:
    return sorted(".".join(p.parent.relative_to(SRC).parts) for p in (SRC / "veil").rglob("__init__.py"))


def test_top_level_exports_are_pinned() -> None:
    assert veil.__all__ == EXPECTED


def test_top_level_names_are_the_library_objects() -> None:
    from veil import errors
    from veil.client import policy, sdk, transport, verify

    assert veil.Client is sdk.Client and veil.AsyncClient is sdk.AsyncClient
    assert veil.ClientPolicy is policy.ClientPolicy
    assert veil.OhttpTransport is transport.OhttpTransport
    assert veil.AsyncOhttpTransport is transport.AsyncOhttpTransport
    assert veil.AttestedCoordinator is verify.AttestedCoordinator
    assert all(issubclass(getattr(veil, n), errors.VeilError) for n in EXPECTED if n.endswith("Error"))
    assert set(EXPECTED) <= set(dir(veil))
    with pytest.raises(AttributeError):
        veil.NoSuchName  # noqa: B018


def test_importing_veil_stays_cheap() -> None:
    """The CLI imports veil first: the SDK (openai, httpx, pydantic) loads only when a name is used."""
    code = (
        "import sys, veil\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'openai', 'httpx', 'pydantic'}"
        " or m.startswith('veil.client')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", _packages())
def test_every_package_declares_its_surface(name: str) -> None:
    package = importlib.import_module(name)
    exported = package.__dict__.get("__all__")
    assert isinstance(exported, list), f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    for member in exported:
        assert getattr(package, member, None) is not None, f"{name}.{member} does not resolve"
