"""Attack: a local user reads the database password from the coordinator's command line (9.8).

The attacker controls another process on the coordinator's machine (any local user can read
/proc/<pid>/cmdline of every process). A DSN with a password on `veil coordinator --db` is refused
with ``cli.secret_in_argv`` before anything starts; from --db-file or $VEIL_DB the coordinator starts
and its argv holds no URL at all.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from attacks.coordproc import veil_cli
from veil.attest.sim import SimPlatform
from veil.testing import free_port


def test_no_database_password_in_argv(tmp_path) -> None:
    SimPlatform.create(tmp_path / "sim")
    done = veil_cli(
        "coordinator",
        "--sim-dir",
        str(tmp_path / "sim"),
        "--port",
        str(free_port()),
        "--db",
        "postgresql+psycopg://veil:hunter2@db.internal/veil",
        timeout=60,
    )
    assert done.returncode == 1 and "cli.secret_in_argv" in done.stderr, done.stdout + done.stderr

    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(f"sqlite:///{tmp_path / 'c.db'}\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "coordinator",
            "--sim-dir",
            str(tmp_path / "sim"),
            "--port",
            str(port),
            "--db-file",
            str(dsn_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the coordinator did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert b"sqlite://" not in argv and b"c.db" not in argv
        assert (tmp_path / "c.db").exists()  # the URL from the file was used
    finally:
        proc.terminate()
        proc.wait(timeout=30)
