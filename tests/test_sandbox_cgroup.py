"""Engine cgroups of several workers on one host (`veil up --workers N`, a node with many pods).

A worker removes the empty engine cgroups that dead workers left behind. A live worker's cgroup is
empty too, between its creation and its engine joining it: removing that one made the other
worker's engine fail to start (sandbox.setup_failed, no such cgroup.procs).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from veil.sandbox import cgroup

LIMITS = cgroup.Limits(memory_max=256 << 20, pids_max=64, cpus=1.0)


def _create() -> cgroup.EngineCgroup:
    try:
        return cgroup.create(LIMITS)
    except cgroup.CgroupUnavailable as exc:
        pytest.skip(f"this host offers the engine no cgroup: {exc}")


def test_another_worker_leaves_a_live_workers_empty_cgroup_alone() -> None:
    mine = _create()
    try:
        code = (
            "from veil.sandbox import cgroup; import sys; "
            f"c = cgroup.create(cgroup.Limits({LIMITS.memory_max}, {LIMITS.pids_max}, {LIMITS.cpus})); c.remove()"
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        assert all(os.path.isdir(d) for d in mine.directories), "a live worker's cgroup was removed"
    finally:
        mine.remove()


def test_a_dead_workers_empty_cgroup_is_removed() -> None:
    code = (
        "from veil.sandbox import cgroup; "
        f"print(*cgroup.create(cgroup.Limits({LIMITS.memory_max}, {LIMITS.pids_max}, {LIMITS.cpus})).directories)"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        if "CgroupUnavailable" in exc.stderr:
            pytest.skip("this host offers the engine no cgroup")
        raise
    left = done.stdout.split()
    assert left and all(os.path.isdir(d) for d in left)  # its worker died without removing it
    _create().remove()
    assert not any(os.path.isdir(d) for d in left)
