"""Seal a weights file: two streaming passes (digest, then encrypt) in constant memory.

Two passes because the plaintext's segment-tree digest and size live in the header, and the header
is the associated data of every segment, so it must be final before the first byte is encrypted.
The first pass also computes the whole-file SHA-256 for the manifest; the second re-hashes the
segments it encrypts and refuses if the source changed in between. In both passes the calling
thread reads, hashes the whole file and writes, in order, while worker threads hash (and encrypt)
the next segments (hashlib and AES-GCM release the GIL).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veil.errors import VeilError
from veil.sealing.unseal import default_workers, read_exact
from veil.sealing.format import (
    DEFAULT_SEGMENT_SIZE,
    KEY_SIZE,
    MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
    NONCE_PREFIX_SIZE,
    TINK_HEADER_SIZE,
    SealedHeader,
    SegmentPlan,
    SegmentTree,
    build_header,
    check_key,
    segment_key,
    segment_nonce,
)

# progress(phase, done_bytes, total_bytes); phase is "hashing" or "sealing"
Progress = Callable[[str, int, int], None]
R = TypeVar("R")


def generate_data_key() -> bytes:
    """A fresh random 32-byte per-model data key."""
    return secrets.token_bytes(KEY_SIZE)


def _segments_in_order(
    fin: io.RawIOBase | io.BufferedIOBase,
    plan: SegmentPlan,
    work: Callable[[int, memoryview, memoryview], R],
    consume: Callable[[int, memoryview, memoryview, R], None],
    what: str,
) -> None:
    """Read every segment's plaintext in order; run ``work(i, plaintext, out)`` on worker threads, a few
    segments ahead; call ``consume(i, plaintext, out, result)`` on this thread in index order.
    ``out`` is a scratch buffer of one segment plus AES slack; buffers are reused, so memory stays
    at (workers + 1) pairs. Refuses a source that ends early (``what`` names the pass)."""
    workers = default_workers(plan.segment_size)
    free = [
        (memoryview(bytearray(plan.plaintext_per_segment)), memoryview(bytearray(plan.segment_size))) for _ in range(workers + 1)
    ]
    window: deque[tuple[int, memoryview, memoryview, Future[R]]] = deque()

    def oldest() -> None:
        i, pt, out, result = window.popleft()
        consume(i, pt[: plan.plaintext_len(i)], out, result.result())
        free.append((pt, out))

    with ThreadPoolExecutor(workers, thread_name_prefix="seal") as pool:
        for i in range(plan.count):
            if not free:
                oldest()
            pt, out = free.pop()
            n = plan.plaintext_len(i)
            if read_exact(fin, pt[:n]) != n:
                raise VeilError("seal.source_changed", f"the source shrank while it was being {what}")
            window.append((i, pt, out, pool.submit(work, i, pt[:n], out)))
        while window:
            oldest()
    if fin.read(1):
        raise VeilError("seal.source_changed", f"the source grew while it was being {what}")


def _leaf(_i: int, pt: memoryview, _out: memoryview) -> bytes:
    return hashlib.sha256(pt).digest()


def plaintext_digests(
    src: Path, segment_size: int = DEFAULT_SEGMENT_SIZE, progress: Progress | None = None
) -> tuple[int, bytes, bytes]:
    """(size, whole-file SHA-256, segment-tree digest) of a plaintext file, in one read.

    The tree digest depends only on the bytes and the segment size, so anyone holding the
    published weights can recompute the manifest's ``tree_sha256`` pin.
    """
    if not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE:
        raise ValueError(f"segment size must be in [{MIN_SEGMENT_SIZE}, {MAX_SEGMENT_SIZE}]")
    plan = SegmentPlan(src.stat().st_size, segment_size)
    flat, tree = hashlib.sha256(), SegmentTree(plan)
    done = 0

    def consume(i: int, pt: memoryview, _out: memoryview, leaf: bytes) -> None:
        nonlocal done
        flat.update(pt)
        tree.add(i, leaf)
        done += len(pt)
        if progress:
            progress("hashing", done, plan.plaintext_size)

    with open(src, "rb", buffering=0) as f:
        _segments_in_order(f, plan, _leaf, consume, "hashed")
    return plan.plaintext_size, flat.digest(), tree.digest()


def encrypt_stream(
    fin: io.RawIOBase | io.BufferedIOBase,
    fout: BinaryIO,
    key: bytes,
    header: SealedHeader,
    progress: Progress | None = None,
    *,
    salt: bytes | None = None,
    nonce_prefix: bytes | None = None,
) -> tuple[bytes, str]:
    """Write ``header`` and the encrypted segments of ``fin`` (exactly header.plaintext_size bytes).

    Returns (segment-tree digest of the plaintext actually encrypted, hex SHA-256 of everything
    written); the caller compares the first with the header. Separate from seal_file so tests can forge files and
    pin test vectors (``salt``/``nonce_prefix``: never pass them otherwise; they must be random).
    """
    plan = header.plan
    salt = salt or secrets.token_bytes(KEY_SIZE)
    prefix = nonce_prefix or secrets.token_bytes(NONCE_PREFIX_SIZE)
    if len(salt) != KEY_SIZE or len(prefix) != NONCE_PREFIX_SIZE:
        raise ValueError("salt is 32 bytes, nonce prefix 7")
    aes = algorithms.AES(segment_key(key, salt, header.raw))
    check, sealed = SegmentTree(plan), hashlib.sha256()
    for chunk in (header.raw, bytes([TINK_HEADER_SIZE]) + salt + prefix):
        fout.write(chunk)
        sealed.update(chunk)
    done = 0

    def encrypt(i: int, pt: memoryview, out: memoryview) -> tuple[bytes, int, bytes]:
        enc = Cipher(aes, modes.GCM(segment_nonce(prefix, i, i == plan.count - 1))).encryptor()
        n = enc.update_into(pt, out)
        enc.finalize()
        return hashlib.sha256(pt).digest(), n, enc.tag

    def write(i: int, pt: memoryview, out: memoryview, result: tuple[bytes, int, bytes]) -> None:
        nonlocal done
        leaf, n, tag = result
        check.add(i, leaf)
        for part in (out[:n], tag):
            fout.write(part)
            sealed.update(part)
        done += len(pt)
        if progress:
            progress("sealing", done, plan.plaintext_size)

    _segments_in_order(fin, plan, encrypt, write, "sealed")
    return check.digest(), sealed.hexdigest()


def seal_file(
    src: Path, dst: Path, key: bytes, key_id: str, progress: Progress | None = None, *, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> SealedHeader:
    """Encrypt ``src`` to ``dst`` (written to ``dst.partial``, fsynced, then renamed).

    Returns the header with ``plaintext_sha256`` and ``sealed_sha256`` set: with ``tree_sha256``,
    the digests the manifest pins.
    """
    check_key(key)
    src, dst = Path(src), Path(dst)
    size, flat, digest = plaintext_digests(src, segment_size, progress)
    header = build_header(key, key_id, size, digest, segment_size)
    tmp = dst.with_name(dst.name + ".partial")
    try:
        with open(src, "rb", buffering=0) as fin, open(tmp, "wb") as fout:
            encrypted, sealed_hex = encrypt_stream(fin, fout, key, header, progress)
            if not hmac.compare_digest(encrypted, digest):
                raise VeilError("seal.source_changed", f"{src} changed while it was being sealed")
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return replace(header, plaintext_sha256=flat.hex(), sealed_sha256=sealed_hex)
