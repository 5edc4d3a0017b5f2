"""Fakes for tests (go-sev-guest keeps its fakes under testing/): the simulated H100 and NVML.

``FakeGpu`` is :class:`veil.attest.sim.gpu.SimGpu` (real formats, a locally made root that only
callers who trust it accept); ``FakeNvml`` answers NVML's calls for such GPUs.
"""

from __future__ import annotations

from veil.attest.sim.gpu import DEFAULT_FWID, SimGpu, SimNvml, build_report, nvidia_tcb_info

FakeGpu = SimGpu
FakeNvml = SimNvml
NOT_BEFORE = SimGpu.not_before

__all__ = ["DEFAULT_FWID", "FakeGpu", "FakeNvml", "NOT_BEFORE", "build_report", "nvidia_tcb_info"]
