"""Unseal weights from a file or an http(s) URL straight into a sealed memfd.

Order of checks (each refusal is a VerificationError/ParseError with a stable reason):
header parse (seal.malformed, seal.truncated) -> key check value (seal.wrong_key) -> header MAC
(seal.tampered) -> manifest's plaintext pin vs header (seal.digest_mismatch) -> every segment's GCM
tag, in order, with its index and last-segment flag in the nonce (seal.tampered, seal.reordered,
seal.truncated) -> exact length (seal.truncated / seal.tampered) -> SHA-256 of the plaintext vs the
header and of the sealed bytes vs ``expected_digest`` (seal.digest_mismatch). On any refusal the
memfd is closed before the error propagates, so no caller ever holds unverified plaintext.

Speed: ciphertext is read into reused buffers and decrypted with ``update_into`` into reused
buffers, then written to the memfd; no per-byte Python work. SHA-256 (about 1.7 GB/s per core here,
far slower than AES-GCM's ~13 GB/s) runs on helper threads when the process has at least
MIN_CPUS_FOR_THREADS CPUs: hashlib drops the GIL, so hashing overlaps decryption.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veil.errors import VeilError, VerificationError
from veil.sealing.format import (
    TAG_SIZE,
    TINK_HEADER_SIZE,
    KEY_SIZE,
    SealedHeader,
    SegmentPlan,
    check_key,
    header_length,
    normalize_digest,
    parse_header,
    segment_key,
    segment_nonce,
)
from veil.sealing.memfd import MemFile

Progress = Callable[[int, int], None]  # progress(plaintext_bytes_done, plaintext_total)
REORDER_WINDOW = 16  # on a bad tag, try this many neighbouring indices to name seal.reordered
_POOL = 4  # buffers per hashing stage: enough to keep a helper thread busy


class _Reader(Protocol):
    def readinto(self, view: memoryview) -> int: ...


class _ChunkReader:
    """readinto() over an iterator of byte chunks (an HTTP body)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def readinto(self, view: memoryview) -> int:
        while not self._left:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._left = memoryview(nxt)
        n = min(len(view), len(self._left))
        view[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _read_exact(r: _Reader, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = r.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _is_url(src: str | Path) -> bool:
    return isinstance(src, str) and src.startswith(("http://", "https://"))


@contextmanager
def _open(src: str | Path, client: httpx.Client | None) -> Iterator[tuple[_Reader, int | None]]:
    """Yield (reader, length if known) for a path or an http(s) URL."""
    if not _is_url(src):
        try:
            f = open(src, "rb", buffering=0)
        except OSError as exc:
            raise VeilError("seal.unreadable", f"cannot open {src}: {exc}") from None
        with f:
            yield f, os.fstat(f.fileno()).st_size
        return
    own = client is None
    client = client or httpx.Client(timeout=httpx.Timeout(30.0, read=300.0), follow_redirects=True)
    try:
        with client.stream("GET", str(src)) as resp:
            if resp.status_code != 200:
                raise VeilError("seal.fetch_failed", f"GET {src}: HTTP {resp.status_code}")
            length = resp.headers.get("content-length")
            encoded = resp.headers.get("content-encoding", "identity") != "identity"
            yield _ChunkReader(resp.iter_bytes(1 << 20)), (int(length) if length and not encoded else None)
    except httpx.HTTPError as exc:
        raise VeilError("seal.fetch_failed", f"GET {src}: {exc}") from None
    finally:
        if own:
            client.close()


class _HashStage:
    """SHA-256 over a stream of buffers, on a helper thread when ``threaded``.

    The caller takes a buffer with acquire(), fills it, and hands it over with submit(); the
    buffer comes back to the free pool once hashed, so memory stays at ``_POOL`` buffers.
    ``enabled=False`` just recycles buffers (no hash).
    """

    def __init__(self, bufsize: int, enabled: bool, threaded: bool) -> None:
        self.enabled = enabled
        self._h = hashlib.sha256()
        self._threaded = enabled and threaded
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(_POOL if self._threaded else 1):
            self._free.put(bytearray(bufsize))
        self._todo: queue.SimpleQueue[tuple[bytearray, int, bool] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, daemon=True) if self._threaded else None
        if self._thread:
            self._thread.start()

    def _run(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, n, recycle = item
            self._h.update(memoryview(buf)[:n])
            if recycle:
                self._free.put(buf)

    def acquire(self) -> bytearray:
        return self._free.get()

    def submit(self, buf: bytearray, n: int, recycle: bool = True) -> None:
        if self._threaded:
            self._todo.put((buf, n, recycle))
            return
        if self.enabled:
            self._h.update(memoryview(buf)[:n])
        if recycle:
            self._free.put(buf)

    def stop(self) -> None:
        if self._thread and self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.stop()
        return self._h.hexdigest()


def read_header(src: str | Path, *, http_client: httpx.Client | None = None) -> SealedHeader:
    """The (unauthenticated) header: tells a worker which key id to ask the coordinator for."""
    with _open(src, http_client) as (r, _):
        return _read_header(r)


def _read_header(r: _Reader) -> SealedHeader:
    first = bytearray(12)
    n = _read_exact(r, memoryview(first))
    hlen = header_length(bytes(first[:n]))
    rest = bytearray(hlen - 12)
    n = _read_exact(r, memoryview(rest))
    return parse_header(bytes(first) + bytes(rest[:n]))


# bench/unseal.py, 2 CPUs: threads 1.36x when a core was idle, 0.8x when other work saturated both
# (they add no CPU time: 0.28 s either way for 256 MiB). Workers are dedicated VMs, so default on.
MIN_CPUS_FOR_THREADS = 2


def _use_threads() -> bool:
    """Hash on helper threads when more than one CPU is usable."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return usable >= MIN_CPUS_FOR_THREADS


def unseal_to_memfd(
    src: str | Path,
    key: bytes,
    *,
    expected_digest: str | None = None,
    expected_plaintext_digest: str | None = None,
    verify_plaintext: bool = True,
    threads: bool | None = None,
    http_client: httpx.Client | None = None,
    progress: Progress | None = None,
) -> MemFile:
    """Decrypt ``src`` (path or http(s) URL) into a sealed memfd and return it.

    ``expected_digest``: the manifest's ``sealed_sha256``, SHA-256 of the whole sealed file.
    ``expected_plaintext_digest``: the manifest's plaintext ``sha256``; checked against the header
    before decrypting. ``verify_plaintext=False`` skips re-hashing the plaintext: the header's digest
    is then trusted because the header is authenticated under a committed key (see the docs); it
    is the one knob that trades a check for speed. ``threads``: hash on helper threads (default:
    when at least MIN_CPUS_FOR_THREADS CPUs are usable).
    """
    check_key(key)
    want_sealed = normalize_digest(expected_digest) if expected_digest else None
    want_plain = normalize_digest(expected_plaintext_digest) if expected_plaintext_digest else None
    threaded = _use_threads() if threads is None else threads
    with _open(src, http_client) as (reader, length):
        header = _read_header(reader)
        header.verify_key(key)
        if want_plain and not hmac.compare_digest(want_plain, header.plaintext_sha256):
            raise VerificationError("seal.digest_mismatch", "sealed file holds other weights than the manifest pins")
        if length is not None and length < header.sealed_size:
            raise VerificationError("seal.truncated", f"sealed file is {length} bytes, header says {header.sealed_size}")
        if length is not None and length > header.sealed_size:
            raise VerificationError("seal.tampered", "sealed file has bytes after its last segment")
        mf = MemFile.create(size_hint=header.plaintext_size)
        try:
            sealed_hex, plain_hex = _decrypt_body(
                reader, key, header, mf, want_sealed is not None, verify_plaintext, threaded, progress
            )
            if want_sealed and not hmac.compare_digest(sealed_hex, want_sealed):
                raise VerificationError("seal.digest_mismatch", "sealed file's SHA-256 differs from the manifest's pin")
            if verify_plaintext and not hmac.compare_digest(plain_hex, header.plaintext_sha256):
                raise VerificationError("seal.digest_mismatch", "plaintext SHA-256 differs from the header's")
            mf.sha256 = header.plaintext_sha256
            mf.seal()
            return mf
        except BaseException:
            mf.close()
            raise


def _decrypt_body(
    reader: _Reader,
    key: bytes,
    header: SealedHeader,
    mf: MemFile,
    hash_sealed: bool,
    hash_plain: bool,
    threaded: bool,
    progress: Progress | None,
) -> tuple[str, str]:
    """Stream every segment through AES-GCM into ``mf``; returns (sealed hex, plaintext hex)."""
    plan = header.plan
    tink = bytearray(TINK_HEADER_SIZE)
    if _read_exact(reader, memoryview(tink)) != TINK_HEADER_SIZE:
        raise VerificationError("seal.truncated", "sealed file ends before its first segment")
    if tink[0] != TINK_HEADER_SIZE:
        raise VerificationError("seal.tampered", "stream header length byte was modified")
    salt, prefix = bytes(tink[1 : 1 + KEY_SIZE]), bytes(tink[1 + KEY_SIZE :])
    skey = segment_key(key, salt, header.raw)
    aes = algorithms.AES(skey)
    ct_stage = _HashStage(plan.segment_size, hash_sealed, threaded)
    pt_stage = _HashStage(plan.plaintext_per_segment + 15, hash_plain, threaded)  # update_into slack
    try:
        ct_stage.submit(bytearray(header.raw + tink), len(header.raw) + TINK_HEADER_SIZE, recycle=False)
        last = plan.count - 1
        done = 0
        for i in range(plan.count):
            n = plan.plaintext_len(i)
            ct = ct_stage.acquire()
            ctv = memoryview(ct)
            if _read_exact(reader, ctv[: n + TAG_SIZE]) != n + TAG_SIZE:
                raise VerificationError("seal.truncated", f"sealed file ends inside segment {i} of {plan.count}")
            pt = pt_stage.acquire()
            dec = Cipher(aes, modes.GCM(segment_nonce(prefix, i, i == last), bytes(ctv[n : n + TAG_SIZE]))).decryptor()
            dec.update_into(ctv[:n], pt)
            try:
                dec.finalize()
            except InvalidTag:
                raise _classify(aes, prefix, plan.count, i, ctv[: n + TAG_SIZE], plan) from None
            mf.write_all(memoryview(pt)[:n])
            ct_stage.submit(ct, n + TAG_SIZE)
            pt_stage.submit(pt, n)
            done += n
            if progress:
                progress(done, plan.plaintext_size)
        if reader.readinto(memoryview(bytearray(1))):
            raise VerificationError("seal.tampered", "sealed file has bytes after its last segment")
        return ct_stage.hexdigest(), pt_stage.hexdigest()
    finally:
        ct_stage.stop()
        pt_stage.stop()


def _classify(
    aes: algorithms.AES, prefix: bytes, count: int, index: int, seg: memoryview, plan: SegmentPlan
) -> VerificationError:
    """A segment failed at ``index``: if it authenticates at a nearby index it was moved."""
    n = len(seg) - TAG_SIZE
    out = bytearray(n + 15)
    lo, hi = max(0, index - REORDER_WINDOW), min(count, index + REORDER_WINDOW + 1)
    for j in range(lo, hi):
        if j == index or plan.plaintext_len(j) != n:
            continue
        dec = Cipher(aes, modes.GCM(segment_nonce(prefix, j, j == count - 1), bytes(seg[n:]))).decryptor()
        dec.update_into(seg[:n], out)
        try:
            dec.finalize()
        except InvalidTag:
            continue
        return VerificationError("seal.reordered", f"segment {j} was found at position {index}")
    return VerificationError("seal.tampered", f"segment {index} does not authenticate")
