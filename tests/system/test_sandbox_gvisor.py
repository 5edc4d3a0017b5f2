"""The gVisor profile: its OCI bundle, and its refusal where runsc cannot run."""

from __future__ import annotations

import pytest

from veil.sandbox import SandboxError, SandboxProfile, check_enforceable, gvisor


@pytest.fixture(autouse=True)
def _fresh_probe():
    gvisor.probe_gvisor.cache_clear()
    yield
    gvisor.probe_gvisor.cache_clear()


def _config(socket_dir: str = "/run/veil/engine") -> dict:
    return gvisor.oci_config(
        ["engine"], socket_dir=socket_dir, ro_paths=["/models/m.gguf"], environ={"PATH": "/usr/bin", "API_TOKEN": "secret"}
    )


def test_bundle_root_is_read_only_and_only_socket_dir_is_writable() -> None:
    config = _config()
    assert config["root"] == {"path": "rootfs", "readonly": True}
    binds = [m for m in config["mounts"] if m["type"] == "bind"]
    writable = [m["destination"] for m in binds if "rw" in m["options"]]
    assert writable == ["/run/veil/engine"]
    dests = {m["destination"] for m in binds}
    assert "/models/m.gguf" in dests and "/" not in dests and "/etc" not in dests


def test_bundle_has_no_network_and_no_privileges() -> None:
    config = _config()
    assert {"type": "network"} in config["linux"]["namespaces"]
    assert config["process"]["noNewPrivileges"] is True
    assert all(v == [] for v in config["process"]["capabilities"].values())
    assert "API_TOKEN=secret" not in config["process"]["env"]
    assert config["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ALLOW"
    flags = gvisor.runsc_flags("/state")
    assert "--network=none" in flags and "--host-uds=create" in flags and "--oci-seccomp" in flags


def test_refusal_names_the_exact_runsc_error(monkeypatch, tmp_path) -> None:
    """A runsc that cannot start a sandbox (e.g. no privileges for its platform) is refused."""
    fake = tmp_path / "runsc"
    fake.write_text("#!/bin/sh\necho 'creating container: permission denied (fake)' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(gvisor, "runsc_path", lambda: str(fake))
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    with pytest.raises(SandboxError) as info:
        check_enforceable(SandboxProfile(name="gvisor"))
    assert info.value.reason == "sandbox.unavailable"
    assert "permission denied (fake)" in info.value.message


def test_gvisor_enforceable_here_or_refused_with_reason() -> None:
    try:
        check_enforceable(SandboxProfile(name="gvisor"))
    except SandboxError as exc:
        assert exc.reason == "sandbox.unavailable" and "runsc" in exc.message
