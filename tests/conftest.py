"""Shared fixtures: where the independent test vectors live.

The vectors (real hardware evidence published by other projects, ``shared/vectors`` beside the
checkout) are found at ``$VEIL_VECTORS`` if set, else beside this checkout, else beside the main
checkout when this is a git worktree. Without them the tests that need them skip, except under
``VEIL_REQUIRE_VECTORS=1`` (set by .ci/run: CI always has them), where they fail.

Layout, by what a test proves: ``tests/system/`` starts real outside processes (deployments,
sandboxes, HAProxy, helm, interop peers); ``tests/attacks/`` performs one attack each against
real processes; ``tests/attest/``, ``tests/ohttp/``, ``tests/sealing/`` are the unit tests of one
package each, and so are the modules still at the top (``test_<package>_*``; the engines' run a
tiny or the bundled model). Both directories, and the few system tests not moved yet
(``SYSTEM_MODULES``), are marked ``system`` here; modules that need the model also mark themselves
``slow``. ``make test-fast`` runs neither: the inner loop, about a minute on an idle machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SYSTEM_DIRS = frozenset({"system", "attacks"})
#: System tests still at the top (their owners were editing them when tests/system/ was made):
#: move them into tests/system/ and drop them here.
SYSTEM_MODULES = frozenset(
    {
        "test_coordinator_crash",
        "test_coordinator_postgres",
        "test_onnx_sealed_flow",
        "test_scale_out",
        "test_webpage_browser",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if path.stem in SYSTEM_MODULES or path.parent.name in SYSTEM_DIRS:
            item.add_marker(pytest.mark.system)


def _main_checkout() -> Path | None:
    """The main working tree when ROOT is a linked worktree (its git dir is shared)."""
    try:
        common = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(common).parent if common else None


def find_vectors() -> Path | None:
    if os.environ.get("VEIL_VECTORS"):
        return Path(os.environ["VEIL_VECTORS"])
    candidates = [ROOT.parent / "shared" / "vectors"]
    main = _main_checkout()
    if main is not None:
        candidates.append(main.parent / "shared" / "vectors")
    return next((c for c in candidates if c.is_dir()), None)


@pytest.fixture(scope="session")
def vectors() -> Path:
    """shared/vectors: real hardware evidence published by other projects (see its README)."""
    found = find_vectors()
    if found is None or not found.is_dir():
        message = f"shared/vectors not found (looked at $VEIL_VECTORS and beside {ROOT})"
        if os.environ.get("VEIL_REQUIRE_VECTORS") == "1":
            pytest.fail(f"{message}; VEIL_REQUIRE_VECTORS=1 forbids skipping", pytrace=False)
        pytest.skip(message)
    return found
