"""NVML collection against a fake NVML (no GPU here): shapes, CC-mode checks, errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from attest_verdicts import nvidia_verdict
from veil.attest.nvidia.validate import NvidiaPolicy
from veil.attest.nvidia.collect import collect_evidence
from veil.attest.nvidia.testing import FakeGpu, FakeNvml
from veil.errors import VeilError

NONCE = bytes(range(100, 132))


def test_collects_every_gpu_and_it_verifies() -> None:
    gpus = [FakeGpu(), FakeGpu()]
    nvml = FakeNvml(gpus)
    evidence = collect_evidence(NONCE, nvml=nvml)
    assert len(evidence) == 2 and nvml.shut_down
    for gpu, ev in zip(gpus, evidence):
        v = nvidia_verdict(
            ev,
            NvidiaPolicy(require_rims=False, require_revocation=False),  # collateral: tests/attest/test_composite.py
            expected_nonce=NONCE,
            as_of=datetime(2025, 1, 1, tzinfo=UTC),
            trusted_roots=gpu.simulation_roots,
        )
        assert v.accepted, v


@pytest.mark.parametrize(
    "nvml,reason",
    [
        (FakeNvml([FakeGpu()], init_error=True), "nvidia.no_gpu"),
        (FakeNvml([FakeGpu()], cc=0), "nvidia.no_gpu"),
        (FakeNvml([]), "nvidia.no_gpu"),
        (FakeNvml([FakeGpu()], report_error=True), "nvidia.collect_failed"),
    ],
)
def test_errors(nvml: FakeNvml, reason: str) -> None:
    with pytest.raises(VeilError) as exc:
        collect_evidence(NONCE, nvml=nvml)
    assert exc.value.reason == reason


def test_without_nvml_installed_says_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pynvml":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    with pytest.raises(VeilError) as exc:
        collect_evidence(NONCE)
    assert exc.value.reason == "nvidia.no_gpu"


def test_nonce_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        collect_evidence(b"short", nvml=FakeNvml([FakeGpu()]))
