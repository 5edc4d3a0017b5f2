"""Attack: a worker's host registers a GPU whose provisioning certificate NVIDIA revoked.

The attacker controls the worker's host: the OCSP statuses in its collateral cache and in the
evidence JSON. NVIDIA revoked a certificate of the GPU's chain (here: the simulated NVIDIA OCSP
service answers REVOKED for the provisioner CA), and the host wants the coordinator to accept the
GPU anyway: by forwarding the REVOKED answer, by withholding it, or by replaying an old GOOD one.
Defence: the coordinator verifies every OCSP status offline (signature by the issuer, this
certificate, times) and refuses REVOKED (``nvidia.cert_revoked``), a missing status
(``nvidia.revocation_missing``) and one past its next update (``nvidia.revocation_stale``) or
older than the manifest's bound. The target is a real coordinator process; the control run sends
current GOOD statuses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from gpu_fixtures import composite_worker, gpu_coordinator
from platform_fixtures import reason
from veil.attest.nvidia.verify import fingerprint


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = gpu_coordinator(tmp_path_factory.mktemp("gpu-revoked"))
    yield coordinator, sim, gpu
    coordinator.stop()


def test_control_good_statuses_register(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    assert reason(coordinator.register(composite_worker(sim, lambda n: [gpu.evidence(n)]))) == "ok"


def test_revoked_status_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    worker = composite_worker(sim, lambda n: [gpu.evidence(n, revoked=frozenset({"ca"}))])
    assert reason(coordinator.register(worker)) == "nvidia.cert_revoked"


def test_withheld_status_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    ca = fingerprint(gpu.certs["ca"])

    def withheld(nonce: bytes):  # type: ignore[no-untyped-def]
        ev = gpu.evidence(nonce)
        kept = tuple(d for fp, d in gpu.ocsp_responses().items() if fp != ca)
        return [dataclasses.replace(ev, ocsp=kept)]

    assert reason(coordinator.register(composite_worker(sim, withheld))) == "nvidia.revocation_missing"


def test_replayed_old_good_status_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)  # from before the revocation
    worker = composite_worker(sim, lambda n: [gpu.evidence(n, now=old)])
    assert reason(coordinator.register(worker)) == "nvidia.revocation_stale"
