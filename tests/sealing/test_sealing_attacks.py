"""Sealed weights under attack: truncation, reordering, splicing, tampering, wrong key, wrong digest.

Every refusal must carry its reason code, with one worker thread and with several (segments are
decrypted in parallel), and leave no open memfd and no thread behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

import httpx
import pytest

from veil.errors import VeilError
from veil.sealing import generate_data_key, seal_file, unseal_to_memfd
from veil.sealing.format import TAG_SIZE, TINK_HEADER_SIZE, build_header
from veil.sealing.seal import encrypt_stream, plaintext_digests

SEG = 4096
FIRST = SEG - TINK_HEADER_SIZE - TAG_SIZE
FULL = SEG - TAG_SIZE
SIZE = FIRST + 4 * FULL + 1234  # six segments, the last one short


def _open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")}


@pytest.fixture
def sealed(tmp_path: Path):
    key = generate_data_key()
    data = os.urandom(SIZE)
    (tmp_path / "m.bin").write_bytes(data)
    header = seal_file(tmp_path / "m.bin", tmp_path / "m.sealed", key, "model", segment_size=SEG)
    return key, data, header, (tmp_path / "m.sealed").read_bytes()


def _refuse(tmp_path: Path, blob: bytes, key: bytes, reason: str, **kw) -> None:
    path = tmp_path / "attacked.sealed"
    path.write_bytes(blob)
    for workers in (1, 3):
        before, threads = _open_fds(), threading.active_count()
        with pytest.raises(VeilError) as err:
            unseal_to_memfd(path, key, workers=workers, **kw)
        assert err.value.reason == reason, err.value
        assert not any("memfd:" in fd for fd in _open_fds() - before), "a refused unseal left a memfd open"
        assert threading.active_count() == threads, "a refused unseal left a worker thread running"


def _segment_offsets(header, blob: bytes) -> list[tuple[int, int]]:
    """(start, end) of each segment in the sealed file."""
    plan, off = header.plan, len(header.raw) + TINK_HEADER_SIZE
    spans = []
    for i in range(plan.count):
        end = off + plan.plaintext_len(i) + TAG_SIZE
        spans.append((off, end))
        off = end
    assert off == len(blob)
    return spans


def test_truncation_at_every_boundary_and_mid_segment(tmp_path: Path, sealed) -> None:
    key, _, header, blob = sealed
    spans = _segment_offsets(header, blob)
    cuts = {0, 7, len(header.raw) - 1, len(header.raw), len(header.raw) + 20}
    cuts |= {start for start, _ in spans} | {end for _, end in spans[:-1]}
    cuts |= {(start + end) // 2 for start, end in spans} | {len(blob) - 1}
    for cut in sorted(cuts):
        _refuse(tmp_path, blob[:cut], key, "seal.truncated")


def test_truncation_detected_while_streaming_without_length(sealed) -> None:
    key, _, header, blob = sealed
    spans = _segment_offsets(header, blob)
    for cut in [spans[1][1], (spans[3][0] + spans[3][1]) // 2, len(blob) - 1]:
        part = blob[:cut]
        client = httpx.Client(transport=httpx.MockTransport(lambda _r, part=part: httpx.Response(200, content=iter([part]))))
        with pytest.raises(VeilError) as err:
            unseal_to_memfd(
                "http://store/m.sealed", key, http_client=client, workers=3, expected_tree_digest=header.tree_sha256
            )  # worker threads stop on errors too
        assert err.value.reason == "seal.truncated"


def test_trailing_bytes_refused(tmp_path: Path, sealed) -> None:
    key, _, _, blob = sealed
    _refuse(tmp_path, blob + b"\x00", key, "seal.tampered")
    client = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=iter([blob + b"x"]))))
    with pytest.raises(VeilError) as err:
        unseal_to_memfd("http://store/m.sealed", key, http_client=client)
    assert err.value.reason == "seal.tampered"


def test_reordered_segments(tmp_path: Path, sealed) -> None:
    key, _, header, blob = sealed
    (a0, a1), (b0, b1) = _segment_offsets(header, blob)[1:3]
    swapped = blob[:a0] + blob[b0:b1] + blob[a0:a1] + blob[b1:]
    _refuse(tmp_path, swapped, key, "seal.reordered")
    (c0, c1) = _segment_offsets(header, blob)[4]
    dup = blob[:c0] + blob[a0:a1] + blob[c1:]  # segment 1 replayed at position 4
    _refuse(tmp_path, dup, key, "seal.reordered")


def test_splice_from_another_file_with_the_same_key(tmp_path: Path, sealed) -> None:
    key, _, header, blob = sealed
    (tmp_path / "other.bin").write_bytes(os.urandom(SIZE))
    other_header = seal_file(tmp_path / "other.bin", tmp_path / "other.sealed", key, "model", segment_size=SEG)
    other = (tmp_path / "other.sealed").read_bytes()
    s, e = _segment_offsets(header, blob)[2]
    _refuse(tmp_path, blob[:s] + other[s:e] + blob[e:], key, "seal.tampered")
    # the other file's (validly MACed) header on this body: the segment key no longer matches
    _refuse(tmp_path, other[: len(other_header.raw)] + blob[len(header.raw) :], key, "seal.tampered")
    # this header and stream header on the other body
    cut = len(header.raw) + TINK_HEADER_SIZE
    _refuse(tmp_path, blob[:cut] + other[cut:], key, "seal.tampered")


def _flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1 :]


KID = len("model")


@pytest.mark.parametrize(
    "field,offset,reason",
    [
        ("magic", 0, "seal.malformed"),
        ("segment size", 16, "seal.tampered"),
        ("plaintext size", 25, "seal.tampered"),
        ("plaintext tree sha256", 40, "seal.tampered"),
        ("key id", 58, "seal.tampered"),
        ("key check value", 58 + KID, "seal.wrong_key"),  # indistinguishable from a wrong key, still refused
        ("header mac", 58 + KID + 16, "seal.tampered"),
        ("header mac end", 58 + KID + 47, "seal.tampered"),
    ],
)
def test_tampered_header(tmp_path: Path, sealed, field: str, offset: int, reason: str) -> None:
    key, _, header, blob = sealed
    assert offset < len(header.raw)
    _refuse(tmp_path, _flip(blob, offset), key, reason)


def test_tampered_stream_and_segments(tmp_path: Path, sealed) -> None:
    key, _, header, blob = sealed
    hl = len(header.raw)
    for offset in (hl, hl + 1, hl + 33, hl + 39):  # Tink length byte, salt, nonce prefix
        _refuse(tmp_path, _flip(blob, offset), key, "seal.tampered")
    for start, end in _segment_offsets(header, blob):
        for offset in (start, (start + end) // 2, end - 1):  # ciphertext and tag bytes
            _refuse(tmp_path, _flip(blob, offset), key, "seal.tampered")


def test_first_failing_segment_is_reported_with_several_workers(tmp_path: Path, sealed) -> None:
    """Workers finish out of order; the refusal is still the lowest failing segment's, as a
    one-by-one pass reports it (segment 1 tampered, segment 4 tampered, the stream cut in segment 5,
    served without a length so the cut is only seen while reading)."""
    key, _, header, blob = sealed
    spans = _segment_offsets(header, blob)
    attacked = _flip(_flip(blob, spans[4][0] + 9), spans[1][0] + 9)[: spans[5][0] + 10]
    client = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=iter([attacked]))))
    for workers in (1, 2, 5):
        with pytest.raises(VeilError) as err:
            unseal_to_memfd("http://store/m.sealed", key, http_client=client, workers=workers)
        assert (err.value.reason, err.value.message) == ("seal.tampered", "segment 1 does not authenticate")


def test_wrong_key(tmp_path: Path, sealed) -> None:
    _, _, _, blob = sealed
    _refuse(tmp_path, blob, generate_data_key(), "seal.wrong_key")
    with pytest.raises(VeilError) as err:
        unseal_to_memfd(tmp_path / "nope.sealed", b"\x00" * 31)
    assert err.value.reason == "seal.bad_key"


def test_tree_pin(tmp_path: Path, sealed) -> None:
    key, data, header, blob = sealed
    _refuse(tmp_path, blob, key, "seal.digest_mismatch", expected_tree_digest="sha256:" + "11" * 32)
    # the whole-file SHA-256 is not the tree pin: passing it by mistake is refused, not ignored
    _refuse(tmp_path, blob, key, "seal.digest_mismatch", expected_tree_digest=hashlib.sha256(data).hexdigest())
    path = tmp_path / "ok.sealed"
    path.write_bytes(blob)
    with unseal_to_memfd(path, key, expected_tree_digest="sha256:" + header.tree_sha256.upper()) as mf:
        assert mf.read() == data and mf.tree_sha256 == header.tree_sha256


def test_lying_header_from_a_key_holder(tmp_path: Path) -> None:
    """A key holder seals bytes under a header naming another tree: the recomputed tree catches it."""
    key = generate_data_key()
    real, claimed = os.urandom(SIZE), os.urandom(SIZE)
    (tmp_path / "claimed.bin").write_bytes(claimed)
    header = build_header(key, "model", SIZE, plaintext_digests(tmp_path / "claimed.bin", SEG)[2], SEG)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(real), out, key, header)
    _refuse(tmp_path, out.getvalue(), key, "seal.digest_mismatch", expected_tree_digest=header.tree_sha256)
    # verify_plaintext=False trusts the authenticated header: documented trade-off
    path = tmp_path / "attacked.sealed"  # written by _refuse above
    with unseal_to_memfd(path, key, verify_plaintext=False) as mf:
        assert mf.read() == real


def test_source_changed_while_sealing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import veil.sealing.seal as seal_mod

    src = tmp_path / "m.bin"
    src.write_bytes(os.urandom(SIZE))
    real = seal_mod.plaintext_digests
    monkeypatch.setattr(seal_mod, "plaintext_digests", lambda *a: real(*a)[:2] + (bytes(32),))
    with pytest.raises(VeilError) as err:
        seal_file(src, tmp_path / "m.sealed", generate_data_key(), "model", segment_size=SEG)
    assert err.value.reason == "seal.source_changed"
    assert not (tmp_path / "m.sealed").exists() and not (tmp_path / "m.sealed.partial").exists()
