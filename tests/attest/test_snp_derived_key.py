"""SNP_GET_DERIVED_KEY (MSG_KEY_REQ) against a fake /dev/sev-guest: the request we send, the key we
take, and refusals. Not run on real hardware (no SNP guest here)."""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import Any

import pytest

from veil.attest.snp import derived_key as dk
from veil.errors import VeilError

FIRMWARE_KEY = bytes(range(32))


def fake(tmp_path: Path, *, status: int = 0, fail: bool = False):
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    seen: dict[str, Any] = {}

    def ioctl(fd: int, request: int, arg: Any) -> int:
        seen["request"] = request
        version, req_ptr, resp_ptr, _ = struct.unpack_from("<B7xQQQ", arg, 0)
        seen["version"] = version
        seen["req"] = struct.unpack("<IIQIIQ", ctypes.string_at(req_ptr, 32))
        if fail:
            struct.pack_into("<Q", arg, 24, 0x27)
            raise OSError(5, "Input/output error")
        ctypes.memmove(resp_ptr, struct.pack("<I28x32s", status, FIRMWARE_KEY), 64)
        return 0

    return str(device), ioctl, seen


def test_request_selects_measurement_and_policy_with_the_vcek(tmp_path) -> None:
    device, ioctl, seen = fake(tmp_path)
    assert dk.derived_key(device=device, ioctl=ioctl) == FIRMWARE_KEY
    assert seen["request"] == 0xC0205301  # _IOWR('S', 1, struct snp_guest_request_ioctl)
    assert seen["version"] == 1
    root, rsvd, fields, vmpl, svn, tcb = seen["req"]
    assert (root, rsvd, vmpl, svn, tcb) == (0, 0, 0, 0, 0)
    assert fields == dk.FIELD_MEASUREMENT | dk.FIELD_GUEST_POLICY


def test_sealing_key_is_domain_separated(tmp_path) -> None:
    device, ioctl, _ = fake(tmp_path)
    key = dk.sealing_key(device=device, ioctl=ioctl)
    assert len(key) == 32 and key != FIRMWARE_KEY
    assert key == dk.sealing_key(device=device, ioctl=ioctl)


def test_firmware_refusal_and_ioctl_failure(tmp_path) -> None:
    device, ioctl, _ = fake(tmp_path, status=0x16)
    with pytest.raises(VeilError) as exc:
        dk.derived_key(device=device, ioctl=ioctl)
    assert exc.value.reason == "sealing.failed"
    device, ioctl, _ = fake(tmp_path, fail=True)
    with pytest.raises(VeilError) as exc:
        dk.derived_key(device=device, ioctl=ioctl)
    assert exc.value.reason == "sealing.failed" and "0x27" in exc.value.message


def test_missing_device(tmp_path) -> None:
    with pytest.raises(VeilError) as exc:
        dk.derived_key(device=str(tmp_path / "absent"))
    assert exc.value.reason == "sealing.unavailable"
