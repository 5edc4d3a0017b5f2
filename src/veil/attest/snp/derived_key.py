"""The SEV-SNP sealing key: MSG_KEY_REQ through /dev/sev-guest (SNP_GET_DERIVED_KEY).

The firmware derives a key from the chip's VCEK secret mixed with fields of the guest that we
select here: its launch MEASUREMENT and its POLICY. So the same measured code on the same chip
gets the same key after a restart, and any other code (or the host) cannot. TCB_VERSION is
deliberately *not* mixed in: a firmware update would otherwise lose the state, which recovery
then has to restore. Not run on real hardware yet; tested against a fake ioctl.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.errors import ProtocolError, VerificationError

SEV_GUEST_DEVICE = "/dev/sev-guest"
_IOC_WRITE, _IOC_READ = 1, 2
_GUEST_REQ_SIZE = 32  # struct snp_guest_request_ioctl: u8 msg_version; u64 req; u64 resp; u64 exitinfo2
SNP_GET_DERIVED_KEY = ((_IOC_READ | _IOC_WRITE) << 30) | (_GUEST_REQ_SIZE << 16) | (ord("S") << 8) | 0x1

ROOT_KEY_VCEK = 0
FIELD_GUEST_POLICY = 1 << 0
FIELD_MEASUREMENT = 1 << 3
SEALING_FIELDS = FIELD_GUEST_POLICY | FIELD_MEASUREMENT

_REQ = struct.Struct("<IIQIIQ")  # root_key_select, rsvd, guest_field_select, vmpl, guest_svn, tcb_version
_RESP_SIZE = 64  # MSG_KEY_RSP: u32 status, 28 reserved bytes, 32-byte derived key
CONTEXT = b"veil/snp-sealing-key/v1"

IoctlFn = Callable[[int, int, Any], Any]


def derived_key(
    *, fields: int = SEALING_FIELDS, vmpl: int = 0, device: str = SEV_GUEST_DEVICE, ioctl: IoctlFn | None = None
) -> bytes:
    """The raw 32-byte key the firmware derives for this guest and ``fields``."""
    req = ctypes.create_string_buffer(_REQ.size)
    _REQ.pack_into(req, 0, ROOT_KEY_VCEK, 0, fields, vmpl, 0, 0)
    resp = ctypes.create_string_buffer(_RESP_SIZE)
    arg = bytearray(_GUEST_REQ_SIZE)
    struct.pack_into("<B7xQQQ", arg, 0, 1, ctypes.addressof(req), ctypes.addressof(resp), 0)
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise ProtocolError("sealing.unavailable", f"cannot open {device}: {exc.strerror}") from None
    try:
        (ioctl or fcntl.ioctl)(fd, SNP_GET_DERIVED_KEY, arg)
    except OSError as exc:
        exitinfo = struct.unpack_from("<Q", arg, 24)[0]
        raise ProtocolError("sealing.failed", f"SNP_GET_DERIVED_KEY failed: {exc.strerror} (exitinfo2 0x{exitinfo:x})") from None
    finally:
        os.close(fd)
    raw = resp.raw
    (status,) = struct.unpack_from("<I", raw, 0)
    if status != 0:
        raise VerificationError("sealing.failed", f"firmware refused the key request (status {status})")
    return raw[32:64]


def sealing_key(**kwargs: Any) -> bytes:
    """The state-sealing key: the firmware key, put through HKDF for domain separation."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=CONTEXT).derive(derived_key(**kwargs))
