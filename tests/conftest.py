"""Shared fixtures: where the independent test vectors live.

The vectors (real hardware evidence published by other projects, ``shared/vectors`` beside the
checkout) are found at ``$VEIL_VECTORS`` if set, else beside this checkout, else beside the main
checkout when this is a git worktree. Without them the tests that need them skip, except under
``VEIL_REQUIRE_VECTORS=1`` (set by .ci/run: CI always has them), where they fail.

Marks: modules that need the model or a deployment mark themselves ``slow``; those that start
other real processes (sandboxes, servers, killed coordinators) and every attack test are marked
``system`` here. ``make test-fast`` runs neither: the inner loop, about a minute on an idle machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Test modules that start real outside processes but need no model (else they would be slow).
SYSTEM_MODULES = frozenset({
    "test_coordinator_crash", "test_coordinator_postgres", "test_gateway_interop", "test_haproxy_relay",
    "test_helm_chart", "test_sandbox_gvisor", "test_sandbox_hostile", "test_sandbox_profile",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.fspath))
        if path.stem in SYSTEM_MODULES or path.parent.name == "attacks":
            item.add_marker(pytest.mark.system)


def _main_checkout() -> Path | None:
    """The main working tree when ROOT is a linked worktree (its git dir is shared)."""
    try:
        common = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
            capture_output=True, text=True, timeout=10, check=True,
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
