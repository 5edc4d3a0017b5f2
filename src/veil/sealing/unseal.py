"""Unseal weights from a file or an http(s) URL straight into a sealed memfd, on every core.

Order of checks (each refusal is a VerificationError/ParseError with a stable reason):
header parse (seal.malformed, seal.truncated, seal.unsupported_version) -> key check value
(seal.wrong_key) -> header MAC (seal.tampered) -> manifest's tree pin vs header
(seal.digest_mismatch) -> every segment's GCM tag, with its index and last-segment flag in the
nonce (seal.tampered, seal.reordered, seal.truncated) -> exact length (seal.truncated /
seal.tampered) -> the segment tree of the decrypted plaintext vs the header (seal.digest_mismatch).
On any refusal the memfd is closed before the error propagates, so no caller ever holds unverified
plaintext; the memfd is sealed and returned only after every segment and the tree verify.

Speed: the calling thread reads ciphertext segments in order into a bounded pool of reused
buffers; worker threads decrypt them (``update_into`` into a reused buffer), SHA-256 the plaintext
segment and ``pwrite`` it to its place in the memfd. hashlib, ``cryptography``'s AES-GCM and
pwrite all release the GIL (measured: 2 threads 1.75x one), so threads scale with cores and no
plaintext ever leaves this process's memory and the memfd.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import threading
from dataclasses import dataclass
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
    SegmentTree,
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
# Segment buffers (ciphertext pool + one plaintext buffer per worker) stay within this, so peak
# memory is the model plus at most this much; it caps the worker count for large segments.
BUFFER_BUDGET = 48 << 20


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


def read_exact(r: _Reader, view: memoryview) -> int:
    """Fill ``view`` unless EOF comes first; returns the bytes read."""
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


def read_header(src: str | Path, *, http_client: httpx.Client | None = None) -> SealedHeader:
    """The (unauthenticated) header: tells a worker which key id to ask the coordinator for."""
    with _open(src, http_client) as (r, _):
        return _read_header(r)


def _read_header(r: _Reader) -> SealedHeader:
    first = bytearray(12)
    n = read_exact(r, memoryview(first))
    hlen = header_length(bytes(first[:n]))
    rest = bytearray(hlen - 12)
    n = read_exact(r, memoryview(rest))
    return parse_header(bytes(first) + bytes(rest[:n]))


def default_workers(segment_size: int) -> int:
    """One worker per usable CPU, as many as the buffer budget allows (at least one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, (BUFFER_BUDGET // segment_size - 1) // 2))


def unseal_to_memfd(
    src: str | Path,
    key: bytes,
    *,
    expected_tree_digest: str | None = None,
    verify_plaintext: bool = True,
    workers: int | None = None,
    http_client: httpx.Client | None = None,
    progress: Progress | None = None,
) -> MemFile:
    """Decrypt ``src`` (path or http(s) URL) into a sealed memfd and return it.

    ``expected_tree_digest``: the manifest's ``tree_sha256``, checked against the header before
    decrypting; the plaintext's segment tree is then recomputed and must equal the header's. A worker
    must pass it (without it only the file's self-consistency is checked). ``verify_plaintext=False``
    skips the recomputation and trusts the MACed header: it exists to measure the AEAD-only ceiling
    (bench/unseal.py) and is only sound when the sealer is trusted. ``workers``: decrypting threads
    (default: one per usable CPU, see default_workers).
    """
    check_key(key)
    want = normalize_digest(expected_tree_digest) if expected_tree_digest else None
    with _open(src, http_client) as (reader, length):
        header = _read_header(reader)
        header.verify_key(key)
        if want and not hmac.compare_digest(want, header.tree_sha256):
            raise VerificationError("seal.digest_mismatch", "sealed file holds other weights than the manifest pins")
        if length is not None and length < header.sealed_size:
            raise VerificationError("seal.truncated", f"sealed file is {length} bytes, header says {header.sealed_size}")
        if length is not None and length > header.sealed_size:
            raise VerificationError("seal.tampered", "sealed file has bytes after its last segment")
        salt, prefix = _read_stream_header(reader)
        aes = algorithms.AES(segment_key(key, salt, header.raw))
        mf = MemFile.create(size_hint=header.plaintext_size)
        try:
            segments = _Segments(aes, prefix, header.plan, mf, verify_plaintext)
            root = segments.run(reader, workers or default_workers(header.segment_size), progress)
            if root is not None and not hmac.compare_digest(root.hex(), header.tree_sha256):
                raise VerificationError(
                    "seal.digest_mismatch",
                    "the plaintext's segment tree differs from the header's (other weights under this header)",
                )
            mf.size, mf.tree_sha256 = header.plaintext_size, header.tree_sha256
            mf.seal()
            return mf
        except BaseException:
            mf.close()
            raise


def _read_stream_header(reader: _Reader) -> tuple[bytes, bytes]:
    """Tink's stream header: (salt, nonce prefix)."""
    tink = bytearray(TINK_HEADER_SIZE)
    if read_exact(reader, memoryview(tink)) != TINK_HEADER_SIZE:
        raise VerificationError("seal.truncated", "sealed file ends before its first segment")
    if tink[0] != TINK_HEADER_SIZE:
        raise VerificationError("seal.tampered", "stream header length byte was modified")
    return bytes(tink[1 : 1 + KEY_SIZE]), bytes(tink[1 + KEY_SIZE :])


@dataclass
class _Segments:
    """Every segment of one file: read in order here, decrypted, hashed and written by workers.

    The first failure (lowest segment index, as a one-by-one pass would report it) wins; workers
    skip segments after it, every buffer goes back to the pool, and every thread is joined before
    ``run`` returns or raises, so nothing keeps running on a refused file.
    """

    aes: algorithms.AES
    prefix: bytes
    plan: SegmentPlan
    mf: MemFile
    hash_plain: bool

    def __post_init__(self) -> None:
        self._tree = SegmentTree(self.plan)
        self._lock = threading.Lock()
        self._errors: dict[int, BaseException] = {}
        self._first_error = self.plan.count + 1  # lowest failing index so far
        self._done = 0
        self._todo: queue.SimpleQueue[tuple[int, bytearray] | None] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def run(self, reader: _Reader, workers: int, progress: Progress | None) -> bytes | None:
        """Unseal every segment into the memfd; the plaintext's tree root (None if not hashed)."""
        plan = self.plan
        for _ in range(workers + 1):  # one read ahead of the workers
            self._free.put(bytearray(plan.segment_size))
        threads = [threading.Thread(target=self._work, name=f"unseal-{k}", daemon=True) for k in range(workers)]
        for t in threads:
            t.start()
        try:
            for i in range(plan.count):
                ct = self._free.get()
                n = plan.plaintext_len(i) + TAG_SIZE
                if self._first_error < i or read_exact(reader, memoryview(ct)[:n]) != n:
                    self._free.put(ct)
                    if self._first_error > i:
                        self._fail(i, VerificationError("seal.truncated", f"sealed file ends inside segment {i} of {plan.count}"))
                    break
                self._todo.put((i, ct))
                if progress:
                    progress(self._done, plan.plaintext_size)
            else:
                if reader.readinto(memoryview(bytearray(1))):
                    self._fail(plan.count, VerificationError("seal.tampered", "sealed file has bytes after its last segment"))
        finally:
            for _ in threads:
                self._todo.put(None)
            for t in threads:
                t.join()
        if self._errors:
            raise self._errors[min(self._errors)]
        if progress:
            progress(self._done, plan.plaintext_size)
        return self._tree.digest() if self.hash_plain else None

    def _fail(self, index: int, exc: BaseException) -> None:
        with self._lock:
            self._errors[index] = exc
            self._first_error = min(self._first_error, index)

    def _work(self) -> None:
        pt = bytearray(self.plan.plaintext_per_segment + 15)  # update_into wants a block of slack
        while (item := self._todo.get()) is not None:
            index, ct = item
            try:
                if index < self._first_error:
                    self._one(index, memoryview(ct), memoryview(pt))
            except BaseException as exc:  # handed to run(), which raises the first one
                self._fail(index, exc)
            finally:
                self._free.put(ct)

    def _one(self, index: int, ct: memoryview, pt: memoryview) -> None:
        plan = self.plan
        n = plan.plaintext_len(index)
        last = index == plan.count - 1
        dec = Cipher(self.aes, modes.GCM(segment_nonce(self.prefix, index, last), bytes(ct[n : n + TAG_SIZE]))).decryptor()
        dec.update_into(ct[:n], pt)
        try:
            dec.finalize()
        except InvalidTag:
            raise _classify(self.aes, self.prefix, plan.count, index, ct[: n + TAG_SIZE], plan) from None
        leaf = hashlib.sha256(pt[:n]).digest() if self.hash_plain else b""
        self.mf.write_at(pt[:n], plan.plaintext_offset(index))
        with self._lock:
            if self.hash_plain:
                self._tree.add(index, leaf)
            self._done += n


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
