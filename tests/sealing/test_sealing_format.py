"""Sealed weights: header layout, segment plan and round trips (small, multi-segment, edge sizes)."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import httpx
import pytest

from veil.errors import VeilError
from veil.sealing import generate_data_key, parse_header, read_header, seal_file, unseal_to_memfd
from veil.sealing.format import (
    TAG_SIZE,
    TINK_HEADER_SIZE,
    SegmentPlan,
    build_header,
    default_key_id,
    normalize_digest,
)

SEG = 4096  # small segments: many of them in a few KiB
FIRST = SEG - TINK_HEADER_SIZE - TAG_SIZE  # 4040 plaintext bytes in segment 0
FULL = SEG - TAG_SIZE  # 4080 in every later segment


def _seal(tmp_path: Path, data: bytes, key: bytes, name: str = "m", **kw) -> tuple[Path, object]:
    src = tmp_path / f"{name}.bin"
    src.write_bytes(data)
    dst = tmp_path / f"{name}.sealed"
    header = seal_file(src, dst, key, kw.pop("key_id", "model-1"), segment_size=kw.pop("segment_size", SEG), **kw)
    return dst, header


@pytest.mark.parametrize(
    "size", [0, 1, FIRST - 1, FIRST, FIRST + 1, FIRST + FULL, FIRST + 3 * FULL, FIRST + 5 * FULL - 7, 100_000]
)
def test_round_trip(tmp_path: Path, size: int) -> None:
    key = generate_data_key()
    data = os.urandom(size)
    dst, header = _seal(tmp_path, data, key)
    assert header.plaintext_size == size
    assert header.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert header.tree_sha256 == _tree_by_the_spec(data, SEG).hex()
    assert header.sealed_sha256 == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert dst.stat().st_size == header.sealed_size
    assert not (tmp_path / "m.sealed.partial").exists()
    for workers in (1, 2, 5):
        with unseal_to_memfd(dst, key, expected_tree_digest=header.tree_sha256, workers=workers) as mf:
            assert mf.size == size and mf.tree_sha256 == header.tree_sha256
            assert mf.read() == data
            with open(mf.path, "rb") as f:
                assert f.read() == data


def test_default_segment_size_round_trip(tmp_path: Path) -> None:
    key = generate_data_key()
    data = os.urandom(3 * (1 << 20) + 12345)
    dst, header = _seal(tmp_path, data, key, segment_size=1 << 20)
    assert header.segment_size == 1 << 20 and header.plan.count == 4
    seen: list[int] = []
    with unseal_to_memfd(str(dst), key, progress=lambda done, total: seen.append(done)) as mf:
        assert mf.read() == data
    assert seen == sorted(seen) and seen[-1] == len(data)


def _tree_by_the_spec(data: bytes, seg: int) -> bytes:
    """docs/sealed-weights.md's definition, written out independently of veil.sealing."""
    first, full = seg - 56, seg - 16
    parts = [data[:first]] + [data[o : o + full] for o in range(first, len(data), full)]
    leaves = b"".join(hashlib.sha256(p).digest() for p in parts)
    return hashlib.sha256(b"veil-seal/v2 segment-tree\x00" + struct.pack(">QI", len(data), seg) + leaves).digest()


def test_format_version_1_is_refused_with_a_reason_to_re_seal() -> None:
    raw = build_header(generate_data_key(), "k", 10, bytes(32), SEG).raw
    with pytest.raises(VeilError) as err:
        parse_header(raw[:8] + b"\x00\x01" + raw[10:])
    assert err.value.reason == "seal.unsupported_version" and "re-seal" in err.value.message


def test_segment_plan() -> None:
    assert SegmentPlan(0, SEG).count == 1 and SegmentPlan(0, SEG).plaintext_len(0) == 0
    assert SegmentPlan(FIRST, SEG).count == 1
    assert SegmentPlan(FIRST + 1, SEG).count == 2
    plan = SegmentPlan(FIRST + 2 * FULL, SEG)
    assert plan.count == 3 and [plan.plaintext_len(i) for i in range(3)] == [FIRST, FULL, FULL]
    plan = SegmentPlan(FIRST + FULL + 5, SEG)
    assert [plan.plaintext_len(i) for i in range(plan.count)] == [FIRST, FULL, 5]
    assert plan.body_size() == TINK_HEADER_SIZE + plan.plaintext_size + 3 * TAG_SIZE


def test_header_fields_and_parse() -> None:
    key = generate_data_key()
    digest = hashlib.sha256(b"w").digest()
    header = build_header(key, "llama-3-8b/v2", 1, digest, SEG)
    assert header.raw[:8] == b"VEILSEAL" and len(header.raw) == 106 + len("llama-3-8b/v2")
    again = parse_header(header.raw + b"trailing bytes are not header")
    assert again == header
    assert (again.key_id, again.plaintext_size, again.tree_sha256, again.segment_size) == (
        "llama-3-8b/v2",
        1,
        digest.hex(),
        SEG,
    )
    header.verify_key(key)
    with pytest.raises(VeilError) as err:
        header.verify_key(generate_data_key())
    assert err.value.reason == "seal.wrong_key"


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda raw: b"NOTVEIL!" + raw[8:], "seal.malformed"),
        (lambda raw: raw[:8] + b"\x00\x03" + raw[10:], "seal.unsupported_version"),
        (lambda raw: raw[:12] + b"\x07" + raw[13:], "seal.malformed"),  # unknown algorithm
        (lambda raw: raw[:14] + b"\x00\x00\x00\x10" + raw[18:], "seal.malformed"),  # segment size 16
        (lambda raw: raw[:30], "seal.truncated"),
        (lambda raw: raw[:5], "seal.truncated"),
    ],
)
def test_parse_refusals(mutate, reason: str) -> None:
    raw = build_header(generate_data_key(), "k", 10, bytes(32), SEG).raw
    with pytest.raises(VeilError) as err:
        parse_header(mutate(raw))
    assert err.value.reason == reason


def test_build_header_validates() -> None:
    key = generate_data_key()
    for bad in ({"key_id": ""}, {"key_id": "x" * 256}, {"segment_size": 100}, {"segment_size": 1 << 30}):
        args = {"key_id": "k", "segment_size": SEG} | bad
        with pytest.raises(ValueError):
            build_header(key, args["key_id"], 1, bytes(32), args["segment_size"])
    with pytest.raises(VeilError) as err:
        build_header(b"short", "k", 1, bytes(32))
    assert err.value.reason == "seal.bad_key"


def test_digest_forms() -> None:
    h = "AB" * 32
    assert normalize_digest(h) == normalize_digest("sha256:" + h.lower()) == "ab" * 32
    with pytest.raises(VeilError) as err:
        normalize_digest("sha256:xyz")
    assert err.value.reason == "seal.bad_digest"


def test_default_key_id_is_stable_and_not_the_key() -> None:
    key = generate_data_key()
    assert default_key_id(key) == default_key_id(key) != default_key_id(generate_data_key())
    assert key.hex()[:16] not in default_key_id(key)


def test_read_header_and_http_source(tmp_path: Path) -> None:
    key = generate_data_key()
    data = os.urandom(FIRST + 4 * FULL + 99)
    dst, header = _seal(tmp_path, data, key, key_id="remote-model")
    blob = dst.read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/missing":
            return httpx.Response(404)
        if request.url.path == "/chunked":  # no Content-Length: the length check happens as it streams
            return httpx.Response(200, content=iter([blob[i : i + 777] for i in range(0, len(blob), 777)]))
        return httpx.Response(200, content=blob)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    assert read_header("https://weights.example/m.sealed", http_client=client).key_id == "remote-model"
    assert read_header(dst).key_id == "remote-model"
    for path in ("/m.sealed", "/chunked"):
        with unseal_to_memfd(
            f"https://weights.example{path}", key, expected_tree_digest=header.tree_sha256, http_client=client
        ) as mf:
            assert mf.read() == data
    with pytest.raises(VeilError) as err:
        unseal_to_memfd("https://weights.example/missing", key, http_client=client)
    assert err.value.reason == "seal.fetch_failed"
