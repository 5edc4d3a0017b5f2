"""Attack: the engine stores what it saw where someone can read it later (issue 9.5).

The attacker controls the engine process, under every sandbox profile, and what the worker's
environment happens to hold (``VEIL_*`` API keys, a ``PYTHONPATH`` entry that is someone's home
directory). The engine writes prompts to its stdout and stderr (4 MiB, also disguised as a fixed
message and as one over-long line), names sockets after them in its socket directory, writes files
wherever it can, and looks for host variables and the home directory. Contained: its stdio goes
to a pipe the worker drains and reduces to fixed messages (no ``engine.log``), its socket
directory is fresh at every start and wiped at stop, it gets an explicit environment allowlist,
and only the interpreter's prefixes and site-packages are bound. A launcher handed a log file as
the engine's stdout refuses to start it: ``sandbox.writable_descriptor``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from sandbox_harness import PROFILES, contained, control_detects, require

from veil.sandbox import sandbox_prefix, socketdir
from veil.sandbox.hardening import engine_identity

PROBES = [
    "output_flood_with_secret",
    "socket_names_in_socket_dir",
    "write_socket_dir_file",
    "write_socket_dir_subdir",
    "mkfifo_socket_dir",
    "symlink_socket_dir",
    "write_state_dir",
    "write_model_dir",
    "write_tmp",
    "write_var_tmp",
    "write_dev_shm",
    "environ_carries_host_variables",
    "read_pythonpath_home",
]
CONTROLLED = [
    "output_flood_with_secret",
    "socket_names_in_socket_dir",
    "write_socket_dir_file",
    "write_state_dir",
    "write_tmp",
    "environ_carries_host_variables",
    "read_pythonpath_home",
]


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("profile", list(PROFILES))
def test_nothing_the_engine_wrote_outlives_it(profile: str, probe: str) -> None:
    contained(profile, probe)


@pytest.mark.parametrize("probe", CONTROLLED)
def test_control_sees_it_without_the_protections(probe: str) -> None:
    control_detects(probe)


def test_a_log_file_as_stdout_is_refused(tmp_path) -> None:
    """The old launcher's mistake, made on purpose: the engine must never get a file for stdio."""
    profile = PROFILES["bubblewrap"]
    require(profile)
    sock_dir = tmp_path / "sock"
    socketdir.prepare(sock_dir, "engine.sock", engine_identity())
    log = tmp_path / "engine.log"
    try:
        with open(log, "wb") as out:
            proc = subprocess.run(
                [*sandbox_prefix(profile, socket_dir=str(sock_dir)), sys.executable, "-c", "print('prompt text')"],
                stdout=out,
                stderr=subprocess.PIPE,
                timeout=60,
            )
    finally:
        socketdir.clear(sock_dir)
    assert proc.returncode == 125
    assert b"refused (sandbox.writable_descriptor)" in proc.stderr
    assert log.read_bytes() == b""  # the engine never ran
