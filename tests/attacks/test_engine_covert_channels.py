"""Attack: two sandboxes talk to each other, or one watches the host (issue 15.8).

The attacker controls the engine process under every sandbox profile, and would like a channel to
another sandbox (another worker's engine on the same host) or a view of host-wide activity. It
watches the read-only trees every sandbox shares with inotify (another engine's file opens would
show), and reads global statistics (interrupts, vmstat, diskstats, the system-wide lock table,
softirqs, zone and scheduler statistics, pressure). Removed where cheap: inotify is refused by the
seccomp filter (EPERM), those /proc entries are masked, and the /etc files loading needs are
private copies. What remains (file locks on the shared read-only binds, /proc/meminfo and
/proc/stat, CPU and memory contention) is listed in docs/threat-model.md.
"""

from __future__ import annotations

import pytest
from sandbox_harness import PROFILES, contained, control_detects

PROBES = ["inotify_on_bound_tree", "read_global_stats"]


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_cheap_channels_are_closed(profile: str, probe: str) -> None:
    contained(profile, probe)


@pytest.mark.parametrize("probe", PROBES)
def test_control_sees_them_without_the_protections(probe: str) -> None:
    control_detects(probe)
