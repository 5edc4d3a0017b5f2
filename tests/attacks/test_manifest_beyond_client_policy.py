"""Attack: one admin key signs a manifest that admits workers the client never agreed to.

The attacker holds an operator admin key (or the operator itself turns hostile). It signs and sets
a manifest, valid in every other way, that lets the coordinator hand the OHTTP private keys to a
"worker" it controls: a simulation root of its own laptop with a ``sim-snp`` worker entry, debug
guests, or an engine without a sandbox. The coordinator's evidence is genuine and binds that
manifest, so before the fix every client check passed.

Refused with: the client judges what the manifest admits against its own policy —
``policy.simulation_root_unknown``, ``policy.debug_refused``, ``policy.sandbox_refused`` — in the
SDK, ``veil verify`` (exit 1, reason in the JSON) and before any request is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from attacks.client_stack import Stack, client_stack
from veil.client.sdk import Client
from veil.client.verify import verify_coordinator
from veil.errors import VeilError
from veil.manifest import ReferenceValues, SandboxSettings

pytestmark = pytest.mark.slow  # live servers and processes on loopback


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with client_stack() as s:
        yield s


@pytest.fixture(scope="module")
def laptop_root() -> str:
    """The fingerprint of a simulated root the attacker made on its own machine."""
    return os.urandom(32).hex()


def _variants(stack: Stack, laptop_root: str) -> list[tuple[dict, str]]:
    own = stack.manifest().workers[0]
    laptop_worker = ReferenceValues(platform="sim-snp", measurements=["ee" * 48])
    return [
        (
            {"workers": [own, laptop_worker], "trusted_simulation_roots": [stack.sim.root_fingerprint, laptop_root]},
            "policy.simulation_root_unknown",
        ),
        ({"workers": [own.model_copy(update={"allow_debug": True})]}, "policy.debug_refused"),
        ({"sandbox": SandboxSettings(profile="none")}, "policy.sandbox_refused"),
    ]


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_a_signed_manifest_beyond_the_policy_is_refused(stack: Stack, laptop_root: str, variant: int, tmp_path) -> None:
    policy = stack.policy(pinned=False)  # trusts whatever the admin key signs...
    verify_coordinator(policy)
    change, reason = _variants(stack, laptop_root)[variant]
    stack.update(**change)
    try:
        with pytest.raises(VeilError) as info:  # ...but not what this one admits
            verify_coordinator(policy)
        assert info.value.reason == reason
        with pytest.raises(VeilError) as info:
            Client(policy)
        assert info.value.reason == reason
        if variant == 0:
            path = tmp_path / "policy.json"
            policy.save(path)
            env = {**os.environ, "VEIL_STATE_DIR": str(tmp_path)}
            out = subprocess.run(
                [sys.executable, "-m", "veil", "verify", "--json", "--policy", str(path)],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )
            assert out.returncode == 1 and json.loads(out.stdout)["reason"] == reason
    finally:
        stack.update()  # back to the deployment the policy accepts
    assert verify_coordinator(policy).manifest.digest == stack.head.digest
