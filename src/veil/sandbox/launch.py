"""The trampoline put before the engine command: ``python -m veil.sandbox.launch [opts] -- argv``.

It exists because the seccomp filter must reach bubblewrap as an open descriptor, and the engine
launcher (which only prepends a wrapper argv) cannot pass one. Here the filter is compiled into a
memfd and this process *becomes* bwrap (exec), so the launcher's child pid is the sandbox itself.
For gVisor it stays as a small parent that removes the OCI bundle afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class LaunchSpec:
    """The parts of a SandboxProfile the launch needs (no pydantic import on this path)."""

    name: str
    allow_gpu: bool
    ro_paths: tuple[str, ...]
    socket_dir: str
    landlock: bool = True


def spec_args(spec: LaunchSpec) -> list[str]:
    """Command-line options that reproduce ``spec`` in the trampoline."""
    args = ["--sandbox", spec.name, "--socket-dir", spec.socket_dir]
    if spec.allow_gpu:
        args.append("--gpu")
    if not spec.landlock:
        args.append("--no-landlock")
    for path in spec.ro_paths:
        args += ["--ro", path]
    return args


def _parse(argv: list[str]) -> tuple[LaunchSpec, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m veil.sandbox.launch [options] -- COMMAND...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="veil.sandbox.launch")
    parser.add_argument("--sandbox", choices=("bubblewrap", "gvisor"), required=True)
    parser.add_argument("--socket-dir", required=True)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--no-landlock", action="store_true")
    parser.add_argument("--ro", action="append", default=[])
    ns = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        raise SystemExit("veil.sandbox.launch: no command after --")
    return LaunchSpec(ns.sandbox, ns.gpu, tuple(ns.ro), ns.socket_dir,
                      not ns.no_landlock), command


def main(argv: list[str] | None = None) -> int:
    """Exec bwrap (or run runsc) around the command; exit 125 when the sandbox cannot start."""
    spec, command = _parse(sys.argv[1:] if argv is None else argv)
    if spec.name == "gvisor":
        from veil.sandbox.gvisor import run_in_gvisor

        return run_in_gvisor(spec, command)
    from veil.sandbox.bwrap import engine_environ, wrap_command
    from veil.sandbox.seccomp import bpf_memfd

    fd = bpf_memfd()
    cmd = wrap_command(spec, command, socket_dir=spec.socket_dir, seccomp_fd=fd)
    try:
        os.execve(cmd[0], cmd, engine_environ(dict(os.environ), spec.socket_dir))
    except OSError as exc:
        print(f"veil.sandbox.launch: cannot exec {cmd[0]}: {exc}", file=sys.stderr)
    return 125


if __name__ == "__main__":
    sys.exit(main())
