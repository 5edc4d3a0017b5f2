"""Unsealed weights live in a sealed memfd: immutable, shareable with a child, never on disk,
and unsealing does not hold the model in the process's own heap."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from veil.sealing import MemFile, generate_data_key, seal_file, unseal_to_memfd


def _memfd_with(data: bytes) -> MemFile:
    mf = MemFile.create("plaintext-source")
    mf.write_all(memoryview(data))
    return mf


def test_memfd_is_sealed_and_immutable(tmp_path: Path) -> None:
    key = generate_data_key()
    (tmp_path / "m.bin").write_bytes(b"weights" * 1000)
    seal_file(tmp_path / "m.bin", tmp_path / "m.sealed", key, "m", segment_size=4096)
    with unseal_to_memfd(tmp_path / "m.sealed", key) as mf:
        want = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        assert mf.seals() & want == want
        assert os.get_inheritable(mf.fd) is False  # MFD_CLOEXEC: only pass_fds hands it on
        assert os.readlink(f"/proc/self/fd/{mf.fd}").startswith("/memfd:veil-weights")
        with pytest.raises(OSError) as err:
            os.pwrite(mf.fd, b"evil", 0)  # our own descriptor is read-write: the seal refuses
        assert err.value.errno == errno.EPERM
        with pytest.raises(OSError) as err:  # so is a fresh writable open through /proc
            with open(mf.path, "r+b") as f:
                f.write(b"evil")
        assert err.value.errno == errno.EPERM
        for op in (lambda: os.ftruncate(mf.fd, 1), lambda: os.ftruncate(mf.fd, 10**6)):
            with pytest.raises(OSError):
                op()
        assert mf.read() == b"weights" * 1000
    assert mf.closed


def test_child_process_reads_it_through_pass_fds(tmp_path: Path) -> None:
    """How the engine gets the weights: pass_fds keeps the number, the path is /proc/self/fd/N."""
    key = generate_data_key()
    data = os.urandom(50_000)
    (tmp_path / "m.bin").write_bytes(data)
    seal_file(tmp_path / "m.bin", tmp_path / "m.sealed", key, "m", segment_size=4096)
    with unseal_to_memfd(tmp_path / "m.sealed", key) as mf:
        code = "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())"
        for path in (mf.path, f"/dev/fd/{mf.fd}"):
            out = subprocess.run([sys.executable, "-c", code, path], pass_fds=[mf.fd], capture_output=True, text=True, check=True)
            assert out.stdout.strip() == hashlib.sha256(data).hexdigest()
        # without pass_fds the child does not have it (close-on-exec)
        gone = subprocess.run([sys.executable, "-c", code, mf.path], capture_output=True, text=True)
        assert gone.returncode != 0


def _files_containing(roots: list[Path], needle: bytes, since: float) -> list[Path]:
    """Files under ``roots`` modified since ``since`` that contain ``needle`` (a leak is a new write)."""
    hits = []
    for root in roots:
        for dirpath, _, names in os.walk(root, onerror=lambda e: None):
            for name in names:
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                    if not p.is_file() or st.st_mtime < since or st.st_size > 256 << 20:
                        continue
                    if needle in p.read_bytes():
                        hits.append(p)
                except OSError:
                    continue
    return hits


def test_plaintext_never_written_to_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The plaintext comes from a memfd and goes to a memfd through three worker threads; no file
    anywhere and no log record may hold the canary."""
    caplog.set_level(logging.DEBUG)
    start = time.time() - 1
    canary = b"VEIL-CANARY:" + os.urandom(24).hex().encode()
    data = os.urandom(20_000) + canary + os.urandom(30_000)
    key = generate_data_key()
    with _memfd_with(data) as src:
        header = seal_file(Path(src.path), tmp_path / "m.sealed", key, "m", segment_size=4096)
    with unseal_to_memfd(tmp_path / "m.sealed", key, expected_tree_digest=header.tree_sha256, workers=3) as mf:
        assert canary in mf.read()
        roots = [r for r in (tmp_path, Path(tempfile.gettempdir()), Path("/var/tmp")) if r.is_dir()]
        assert _files_containing(roots, canary, start) == []
    assert not any(canary.decode() in r.getMessage() for r in caplog.records)
    (tmp_path / "leak").write_bytes(b"x" + canary)  # and the scan would have seen a leak
    assert set(_files_containing(roots, canary, start)) == {tmp_path / "leak"}


RSS_PROBE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from veil.sealing import MemFile, generate_data_key, seal_file, unseal_to_memfd
    size, tmp = int(sys.argv[1]), Path(sys.argv[2])
    key = generate_data_key()
    src = MemFile.create("src")
    block = os.urandom(1 << 20)
    for _ in range(size >> 20):
        src.write_all(memoryview(block))
    header = seal_file(Path(src.path), tmp / "big.sealed", key, "big")
    src.close()
    def hwm():  # this process's own peak RSS in KiB (ru_maxrss keeps the parent's across exec)
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    before = hwm()
    mf = unseal_to_memfd(tmp / "big.sealed", key, expected_tree_digest=header.tree_sha256, workers=2)
    after = hwm()
    print(before, after, os.fstat(mf.fd).st_blocks * 512, mf.size)
""")


def test_unseal_peak_rss_is_bounded(tmp_path: Path) -> None:
    """Unsealing 64 MiB must not grow the heap by more than a few buffers: the plaintext is in the
    memfd (shmem, counted separately), not in process memory."""
    size = 64 << 20
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(size), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before_kib, after_kib, memfd_bytes, mf_size = map(int, out.stdout.split())
    assert mf_size == size and memfd_bytes >= size
    assert (after_kib - before_kib) * 1024 < 32 << 20, (before_kib, after_kib)
