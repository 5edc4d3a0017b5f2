"""`veil up` as a user runs it: it starts everything, prints how to chat, and Ctrl-C (SIGINT)
stops every process it started; a second `veil up` on the same state comes back as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from veil.testing import free_port

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def _up(state: Path, cport: int, wport: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "up",
            "--state-dir",
            str(state),
            "--coordinator-port",
            str(cport),
            "--worker-port",
            str(wport),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _wait_until_up(proc: subprocess.Popen, timeout: float = 180) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if "Press Ctrl-C to stop" in line:
            return seen
    proc.kill()
    raise AssertionError(f"veil up did not come up:\n{seen}")


def test_ctrl_c_stops_everything_and_restart_restores(tmp_path) -> None:
    state = tmp_path / "state"
    cport, wport = free_port(), free_port()
    proc = _up(state, cport, wport)
    out = _wait_until_up(proc)
    assert "Veil is up" in out and "SIMULATED" in out
    policy = json.loads((state / "client-policy.json").read_text())
    assert policy["coordinator_url"].endswith(str(cport)) and policy["trust_simulated"] is True
    assert len(_processes_mentioning(str(state))) >= 3  # coordinator, worker, engine sandbox

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 20
    while _processes_mentioning(str(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(state)) == [], "a process outlived Ctrl-C"

    # the same state again: the sealed coordinator state reopens and the manifest is unchanged
    first_digest = policy["manifest_digests"]
    proc = _up(state, cport, wport)
    _wait_until_up(proc)
    again = json.loads((state / "client-policy.json").read_text())
    assert again["manifest_digests"] == first_digest
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0


def test_killing_veil_up_outright_takes_its_processes_along(tmp_path) -> None:
    state = tmp_path / "state"
    proc = _up(state, free_port(), free_port())
    _wait_until_up(proc)
    assert len(_processes_mentioning(str(state))) >= 3
    proc.kill()  # SIGKILL: no handler runs, no orderly stop
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(state)) == [], "processes outlived a killed `veil up`"
