"""Runs the independent OHTTP peer (tests/interop/node/ohttp_peer.mjs: @hpke/core and
@hpke/hybridkem-x-wing under Node) for the interop tests.

``make test`` installs Node (Debian's ``nodejs``) and the pinned npm packages
(scripts/install-test-deps.sh, from tests/interop/node/package-lock.json). Without Node the tests
skip, unless VEIL_REQUIRE_NODE=1; with Node but without the packages they fail and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

PEER_DIR = Path(__file__).resolve().parent / "interop" / "node"
PEER = PEER_DIR / "ohttp_peer.mjs"


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("VEIL_REQUIRE_NODE") == "1":
            pytest.fail("VEIL_REQUIRE_NODE=1 but there is no `node` (scripts/install-test-deps.sh installs it)")
        pytest.skip("Node is not installed (scripts/install-test-deps.sh installs nodejs)")
    if not (PEER_DIR / "node_modules" / "@hpke" / "hybridkem-x-wing").is_dir():
        pytest.fail(f"the npm packages are missing: run `npm ci --prefix {PEER_DIR}` (make test does)")
    return node


def run_peer(mode: str, request: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    """One peer run: ``request`` as JSON on stdin, the peer's JSON answer back."""
    done = subprocess.run(
        [require_node(), str(PEER), mode],
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=timeout,
        cwd=PEER_DIR,
    )
    if done.returncode != 0:
        raise AssertionError(f"node peer ({mode}) failed:\n{done.stderr.decode(errors='replace')[-3000:]}")
    return json.loads(done.stdout)
