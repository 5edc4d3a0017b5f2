"""A known-answer vector that freezes format v1 byte for byte (self-generated: a regression pin;
Tink interop in test_sealing_tink.py is the independent check of the segment layer)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from veil.sealing import unseal_to_memfd
from veil.sealing.format import build_header, parse_header
from veil.sealing.seal import encrypt_stream

KEY = bytes(range(32))
PLAINTEXT = b"veil test vector " * 300  # 5100 bytes: two 4 KiB segments
SALT, PREFIX = b"\xaa" * 32, b"\xbb" * 7
HEADER_HEX = (
    "5645494c5345414c"  # magic VEILSEAL
    "0001"
    "006d"
    "01"
    "03"  # version 1, header length 109, algorithm 1, key id length 3
    "00001000"  # segment size 4096
    "00000000000013ec"  # plaintext size 5100
    "5e0cf910532a991df36d344c7456bc4d96c6408da2bd11a7c394e1f907518a9a"  # plaintext SHA-256
    "6b6174"  # key id "kat"
    "e9310da060c86596081e06955db62d7b"  # key check value
    "b142cbdc8356860b8d685207fab906773a91604ef7b1b0b424d4d9f05d815f75"  # header MAC
)
SEALED_SHA256 = "d25d89aaa26b66afe4fdac66b22836e4f2ca3d0062bc07783bd686e0bb4dc790"


def test_known_answer(tmp_path: Path) -> None:
    header = build_header(KEY, "kat", len(PLAINTEXT), hashlib.sha256(PLAINTEXT).digest(), 4096)
    assert header.raw.hex() == HEADER_HEX
    out = io.BytesIO()
    digest, sealed_hex = encrypt_stream(io.BytesIO(PLAINTEXT), out, KEY, header, salt=SALT, nonce_prefix=PREFIX)
    blob = out.getvalue()
    assert digest == hashlib.sha256(PLAINTEXT).digest()
    assert sealed_hex == hashlib.sha256(blob).hexdigest() == SEALED_SHA256
    assert len(blob) == header.sealed_size == 109 + 40 + 5100 + 2 * 16
    assert blob[109:149] == b"\x28" + SALT + PREFIX
    (tmp_path / "kat.sealed").write_bytes(blob)
    with unseal_to_memfd(tmp_path / "kat.sealed", KEY, expected_digest=SEALED_SHA256) as mf:
        assert mf.read() == PLAINTEXT
    assert parse_header(bytes.fromhex(HEADER_HEX)).key_id == "kat"
