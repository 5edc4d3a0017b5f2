"""The /proc and /sys entries an engine never sees, or sees read-only.

The starting point is the container runtimes' defaults (moby/containerd's OCI spec, which runc and
crun apply): masked ``/proc/acpi``, ``kcore``, ``keys``, ``latency_stats``, ``sched_debug``,
``scsi``, ``timer_list``, ``timer_stats``, ``/sys/firmware``, ``/sys/devices/virtual/powercap``;
read-only ``/proc/bus``, ``fs``, ``irq``, ``sys``, ``sysrq-trigger``. Veil masks more: the root-only
page and allocator maps (``kpage*``, ``slabinfo``, ``vmallocinfo``), kernel symbols and I/O maps,
and the global statistics an engine has no use for, which would let one sandbox watch another's
activity or signal to it (``interrupts``, ``softirqs``, ``schedstat``, ``diskstats``, ``vmstat``,
``zoneinfo``, ``buddyinfo``, ``pagetypeinfo``, ``locks``, ``pressure``...). What engines do read
stays: ``cpuinfo``, ``meminfo``, ``stat``, ``uptime``, ``loadavg`` (see docs/threat-model.md for
the channels they leave).

Only entries present on this host are listed: a new procfs has the same kernel-wide entries as the
host's /proc, and bubblewrap cannot mask a path that does not exist.
"""

from __future__ import annotations

import os

MASKED_FILES: tuple[str, ...] = (
    # the container runtimes' defaults
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/timer_list",
    "/proc/timer_stats",
    # root-only maps of kernel memory, symbols and devices
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/slabinfo",
    "/proc/vmallocinfo",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/key-users",
    "/proc/iomem",
    "/proc/ioports",
    "/proc/modules",
    "/proc/sysrq-trigger",
    "/proc/config.gz",
    # global statistics: another sandbox's activity, or a channel to it
    "/proc/interrupts",
    "/proc/softirqs",
    "/proc/schedstat",
    "/proc/diskstats",
    "/proc/vmstat",
    "/proc/zoneinfo",
    "/proc/buddyinfo",
    "/proc/pagetypeinfo",
    "/proc/locks",
    "/proc/partitions",
    "/proc/swaps",
)
MASKED_DIRS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/scsi",
    "/proc/pressure",
    "/proc/driver",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/fs/selinux",
    "/sys/fs/cgroup",
)
READONLY: tuple[str, ...] = ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq")


def present(paths: tuple[str, ...], *, sys_bound: bool) -> list[str]:
    """The entries of ``paths`` that exist here; /sys ones only when /sys is bound at all."""
    return [p for p in paths if os.path.lexists(p) and (sys_bound or not p.startswith("/sys/"))]
