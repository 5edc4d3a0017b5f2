"""Anonymous, sealable in-memory files that hold plaintext weights and never touch disk.

A memfd lives in shmem (RAM, or swap if the machine has swap: TEE workers must run without swap or
with encrypted swap). After writing we add F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL,
so neither we nor the engine can change the weights afterwards.

Handing it to the engine: ``subprocess.Popen(cmd, pass_fds=[mf.fd])`` keeps the same descriptor
number in the child (and clears its close-on-exec flag there), so the child opens ``mf.path``
(``/proc/self/fd/N``) or ``/dev/fd/N``. bubblewrap passes inherited descriptors through; the sandbox
needs ``--proc /proc`` (or ``--dev /dev``) for the path to resolve. A process outside the
sandbox with the same uid may also use ``/proc/<our pid>/fd/N`` (``MemFile.path_for(pid)``).
"""

from __future__ import annotations

import fcntl
import os

from veil.errors import VeilError

_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


class MemFile:
    """An open memfd. Close it (or use ``with``) to free the memory once no process maps it."""

    def __init__(self, fd: int, size: int, tree_sha256: str = "") -> None:
        self.fd = fd
        self.size = size
        self.tree_sha256 = tree_sha256  # segment-tree digest of the contents, verified while they were written

    @classmethod
    def create(cls, name: str = "veil-weights", size_hint: int = 0) -> "MemFile":
        """A new writable memfd, close-on-exec; memory reserved up front when ``size_hint`` > 0,
        so a too-large model fails now rather than half-way through."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        mf = cls(fd, 0)
        if size_hint:
            try:
                os.posix_fallocate(fd, 0, size_hint)
            except OSError as exc:
                mf.close()
                raise VeilError("seal.no_memory", f"cannot reserve {size_hint} bytes in memory: {exc}") from None
        return mf

    @property
    def path(self) -> str:
        """A path that opens these contents, in this process or in a child given ``pass_fds=[fd]``."""
        return f"/proc/self/fd/{self.fd}"

    def path_for(self, pid: int) -> str:
        """The path another same-uid process (outside a pid namespace) can open."""
        return f"/proc/{pid}/fd/{self.fd}"

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def write_all(self, data: memoryview) -> None:
        """Append ``data``; memfd writes are normally whole, but loop to be sure."""
        while data:
            n = os.write(self.fd, data)
            self.size += n
            data = data[n:]

    def write_at(self, data: memoryview, offset: int) -> None:
        """Write ``data`` at ``offset`` without moving the file offset (threads write side by side);
        the caller sets ``size`` once every part is written."""
        while data:
            n = os.pwrite(self.fd, data, offset)
            data, offset = data[n:], offset + n

    def seal(self) -> None:
        """Freeze size and contents for good and rewind, so readers start at offset 0."""
        os.ftruncate(self.fd, self.size)  # drop any reservation beyond what was written
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, _SEALS)
        os.lseek(self.fd, 0, os.SEEK_SET)

    def seals(self) -> int:
        """The seals in force (F_GET_SEALS bit mask)."""
        return fcntl.fcntl(self.fd, fcntl.F_GET_SEALS)

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """Read without moving the shared file offset (for checks and tests)."""
        return os.pread(self.fd, self.size - offset if length is None else length, offset)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> "MemFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a dropped MemFile must not pin gigabytes of RAM
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"MemFile(fd={self.fd}, size={self.size}, tree_sha256={self.tree_sha256[:16]}…)"
