"""The sandbox profile, the refusal to run an unenforceable one, and the bwrap command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from veil.errors import VeilError
from veil.sandbox import (
    SandboxError,
    SandboxProfile,
    bwrap,
    check_enforceable,
    gvisor,
    landlock,
    sandbox_prefix,
    seccomp,
)
from veil.sandbox.launch import LaunchSpec, _parse, spec_args


@pytest.fixture(autouse=True)
def _fresh_probes():
    bwrap.probe_bubblewrap.cache_clear()
    gvisor.probe_gvisor.cache_clear()
    yield
    bwrap.probe_bubblewrap.cache_clear()
    gvisor.probe_gvisor.cache_clear()


def test_default_profile_is_bubblewrap_without_gpu() -> None:
    profile = SandboxProfile()
    assert (profile.name, profile.allow_gpu, profile.landlock, profile.enforced) == ("bubblewrap", False, True, True)


def test_none_requires_explicit_dev_flag_and_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="dev_unsandboxed"):
        SandboxProfile(name="none")
    profile = SandboxProfile(name="none", dev_unsandboxed=True)
    assert not profile.enforced
    assert "NOT SANDBOXED" in profile.describe()
    # Unconfined, but through the same trampoline: not root, no core dumps, no host variables.
    prefix = sandbox_prefix(profile, socket_dir=str(tmp_path))
    assert prefix[1:3] == ["-m", "veil.sandbox.launch"] and _pairs(prefix, "--sandbox") == ["none"]


def test_profile_is_strict_and_frozen() -> None:
    with pytest.raises(ValidationError):
        SandboxProfile(name="docker")
    with pytest.raises(ValidationError):
        SandboxProfile(ro_paths=("relative/model",))
    with pytest.raises(ValidationError):
        SandboxProfile(unknown_field=1)
    with pytest.raises(ValidationError):
        SandboxProfile(name="bubblewrap", dev_unsandboxed=True)
    profile = SandboxProfile()
    with pytest.raises(ValidationError):
        profile.allow_gpu = True  # type: ignore[misc]


def test_profile_round_trips_as_manifest_json() -> None:
    profile = SandboxProfile(name="gvisor", ro_paths=("/models/m.gguf",), socket_dir="/run/veil")
    assert SandboxProfile.model_validate_json(profile.model_dump_json()) == profile


def test_missing_bwrap_is_refused_not_downgraded(monkeypatch) -> None:
    monkeypatch.setattr(bwrap, "bwrap_path", lambda: None)
    with pytest.raises(SandboxError) as info:
        check_enforceable(SandboxProfile())
    assert info.value.reason == "sandbox.unavailable"
    assert "bubblewrap" in info.value.message
    assert isinstance(info.value, VeilError)


def test_missing_seccomp_binding_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(bwrap, "bwrap_path", lambda: "/usr/bin/bwrap")
    monkeypatch.setattr(seccomp, "seccomp_unavailable", lambda: "no libseccomp here")
    with pytest.raises(SandboxError, match="no libseccomp here"):
        check_enforceable(SandboxProfile())


def test_missing_landlock_is_refused_unless_profile_says_so(monkeypatch) -> None:
    if bwrap.probe_bubblewrap():
        pytest.skip("bubblewrap itself is unavailable here")
    monkeypatch.setattr(landlock, "landlock_abi", lambda: 0)
    with pytest.raises(SandboxError, match="Landlock"):
        check_enforceable(SandboxProfile())
    check_enforceable(SandboxProfile(landlock=False))


def test_gpu_without_device_nodes_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(bwrap, "gpu_device_nodes", lambda: [])
    with pytest.raises(SandboxError, match="nvidia"):
        check_enforceable(SandboxProfile(allow_gpu=True))


def test_missing_runsc_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(gvisor, "runsc_path", lambda: None)
    with pytest.raises(SandboxError) as info:
        check_enforceable(SandboxProfile(name="gvisor"))
    assert info.value.reason == "sandbox.unavailable"
    assert "runsc is not installed" in info.value.message


def test_gvisor_with_gpu_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(bwrap, "gpu_device_nodes", lambda: ["/dev/nvidia0"])
    monkeypatch.setattr(gvisor, "runsc_path", lambda: "/usr/bin/runsc")
    with pytest.raises(SandboxError, match="nvproxy"):
        check_enforceable(SandboxProfile(name="gvisor", allow_gpu=True))


def test_prefix_refuses_missing_socket_dir(tmp_path: Path) -> None:
    profile = SandboxProfile(landlock=False)
    if bwrap.probe_bubblewrap():
        pytest.skip("bubblewrap unavailable")
    with pytest.raises(SandboxError, match="socket"):
        sandbox_prefix(profile)
    with pytest.raises(SandboxError, match="does not exist"):
        sandbox_prefix(profile, socket_dir=str(tmp_path / "nope"))


def _command(profile: SandboxProfile, socket_dir: str = "/run/veil/engine") -> list[str]:
    return bwrap.wrap_command(profile, ["engine", "--serve"], socket_dir=socket_dir, ro_binds=["/models/m.gguf"], seccomp_fd=9)


def _pairs(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_wrap_command_unshares_everything_and_drops_privileges() -> None:
    cmd = _command(SandboxProfile())
    for flag in ("--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session"):
        assert flag in cmd
    assert _pairs(cmd, "--cap-drop") == ["ALL"]
    assert _pairs(cmd, "--seccomp") == ["9"]
    assert cmd[cmd.index("--") + 1 :][-2:] == ["engine", "--serve"]
    assert "/models/m.gguf" in _pairs(cmd, "--ro-bind")
    assert _pairs(cmd, "--bind") == ["/run/veil/engine"]  # the only writable host path
    assert "--share-net" not in cmd


def test_wrap_command_exposes_no_host_secrets() -> None:
    cmd = _command(SandboxProfile())
    binds = _pairs(cmd, "--ro-bind") + _pairs(cmd, "--ro-bind-try")
    assert "/" not in binds and "/etc" not in binds and "/home" not in binds
    assert not {"/etc/hosts", "/etc/resolv.conf", "/etc/shadow"} & set(binds)
    assert not [a for a in cmd if a.startswith("/dev/nvidia")]


def test_engine_environment_is_an_allowlist() -> None:
    env = bwrap.engine_environ(
        {
            "PATH": "/home/me/bin",
            "SECRET_TOKEN": "x",
            "VEIL_API_KEY": "1",
            "AWS_SECRET_ACCESS_KEY": "y",
            "CUDA_VISIBLE_DEVICES": "0",
            "PYTHONPATH": "/home/me",
            "LANG": "C.UTF-8",
        },
        "/run/veil/engine",
    )
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "CUDA_VISIBLE_DEVICES": "0",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
    }


def test_gpu_nodes_bound_only_when_allowed(monkeypatch) -> None:
    monkeypatch.setattr(bwrap, "gpu_device_nodes", lambda: ["/dev/null", "/dev/zero"])
    monkeypatch.setattr(bwrap, "DEVICES", ("/dev/full",))  # stand-ins that exist everywhere
    assert _pairs(_command(SandboxProfile()), "--dev-bind") == ["/dev/full"]
    cmd = _command(SandboxProfile(allow_gpu=True))
    assert _pairs(cmd, "--dev-bind") == ["/dev/full", "/dev/null", "/dev/zero"]


def test_landlock_step_runs_inside_before_the_engine() -> None:
    cmd = _command(SandboxProfile())
    inner = cmd[cmd.index("--") + 1 :]
    assert inner[1:3] == ["-I", "-S"] and inner[3].endswith("veil/sandbox/landlock.py")
    assert inner[inner.index("--socket-dir") + 1] == "/run/veil/engine"
    assert _pairs(inner, "--writable") == ["/tmp", "/dev"]
    plain = _command(SandboxProfile(landlock=False))
    assert plain[plain.index("--") + 1 :] == ["engine", "--serve"]


def test_socket_dir_under_tmp_moves_scratch_away() -> None:
    cmd = _command(SandboxProfile(), socket_dir="/tmp/x/sock")
    assert "/var/tmp" in _pairs(cmd, "--tmpfs") and "/tmp" not in _pairs(cmd, "--tmpfs")
    assert _pairs(cmd[cmd.index("--") :], "--writable") == ["/var/tmp", "/dev"]


def test_wrap_command_requires_the_filter() -> None:
    with pytest.raises(ValueError, match="seccomp"):
        bwrap.wrap_command(SandboxProfile(), ["x"], socket_dir="/run")


def test_python_runtime_paths_cover_interpreter_and_veil() -> None:
    import veil

    paths = bwrap.python_runtime_paths()
    veil_src = str(Path(veil.__file__).resolve().parent)
    real_python = str(Path(sys.executable).resolve())
    for needed in (veil_src, real_python):
        assert any(needed == p or needed.startswith(p + "/") for p in paths), (needed, paths)


def test_launch_spec_round_trips() -> None:
    spec = LaunchSpec("bubblewrap", True, ("/a", "/b c"), "/run/s", False)
    parsed, command = _parse([*spec_args(spec), "--", "python", "-m", "x"])
    assert parsed == spec and command == ["python", "-m", "x"]


def test_seccomp_compiles_to_classic_bpf() -> None:
    if seccomp.seccomp_unavailable():
        pytest.skip(seccomp.seccomp_unavailable())
    program = seccomp.compile_bpf()
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
    oci = seccomp.oci_seccomp()
    names = {n for rule in oci["syscalls"] for n in rule["names"]}  # type: ignore[index]
    assert {"socket", "io_uring_setup", "ptrace", "bpf", "unshare"} <= names


def test_seccomp_filter_denies_inet_allows_unix(tmp_path: Path) -> None:
    """The filter alone (bwrap sharing the network): INET is EPERM, Unix sockets still work."""
    if bwrap.probe_bubblewrap():
        pytest.skip(bwrap.probe_bubblewrap())
    fd = seccomp.bpf_memfd()
    code = (
        "import socket, errno\n"
        "socket.socket(socket.AF_UNIX).close()\n"
        "for fam in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_PACKET):\n"
        "    try: socket.socket(fam, socket.SOCK_DGRAM if fam != 16 else 3)\n"
        "    except OSError as e: assert e.errno == errno.EPERM, e\n"
        "    else: raise SystemExit(f'family {fam} allowed')\n"
        "print('filtered')\n"
    )
    cmd = [bwrap.bwrap_path(), "--ro-bind", "/", "/", "--seccomp", str(fd), sys.executable, "-c", code]
    try:
        result = subprocess.run(cmd, pass_fds=(fd,), capture_output=True, text=True, timeout=60)
    finally:
        import os

        os.close(fd)
    assert result.returncode == 0, result.stderr
    assert "filtered" in result.stdout


def test_landlock_abi_reported() -> None:
    assert landlock.landlock_abi() >= 0


def test_enforceable_here_or_exact_reason() -> None:
    """On this machine: either bubblewrap works, or the refusal names the exact cause."""
    try:
        check_enforceable(SandboxProfile())
    except SandboxError as exc:
        assert exc.reason == "sandbox.unavailable" and exc.message


def test_other_syscall_abi_is_killed(tmp_path: Path) -> None:
    """x32 syscall numbers would dodge a filter keyed on x86_64 numbers: they kill the engine."""
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("x32 exists on x86_64 only")
    profile = SandboxProfile()
    try:
        check_enforceable(profile)
    except SandboxError as exc:
        pytest.skip(str(exc))
    from veil.sandbox import run_sandboxed

    code = "import ctypes; ctypes.CDLL(None).syscall(0x40000000 | 39)"  # x32 getpid
    proc = run_sandboxed(
        profile, [sys.executable, "-c", code], socket_dir=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + 31  # SIGSYS, reported by bwrap as 128 + signal
