"""A known-answer vector that freezes format v2 byte for byte (self-generated: a regression pin;
Tink interop in test_sealing_tink.py is the independent check of the segment layer, and the tree
digest is recomputed here from its definition in docs/sealed-weights.md)."""

from __future__ import annotations

import hashlib
import io
import struct
from pathlib import Path

from veil.sealing import unseal_to_memfd
from veil.sealing.format import build_header, parse_header
from veil.sealing.seal import encrypt_stream

KEY = bytes(range(32))
PLAINTEXT = b"veil test vector " * 300  # 5100 bytes: two 4 KiB segments (4040 + 1060 plaintext bytes)
SALT, PREFIX = b"\xaa" * 32, b"\xbb" * 7
TREE_SHA256 = "4008a92810736f279b30233a47973aeba7370d48bb3fe212eb95caf70341d362"
HEADER_HEX = (
    "5645494c5345414c"  # magic VEILSEAL
    "0002"
    "006d"
    "01"
    "03"  # version 2, header length 109, algorithm 1, key id length 3
    "00001000"  # segment size 4096
    "00000000000013ec"  # plaintext size 5100
    + TREE_SHA256  # segment-tree SHA-256 of the plaintext
    + "6b6174"  # key id "kat"
    "e9310da060c86596081e06955db62d7b"  # key check value
    "697135a14c162afc785f80ad87d4e3c558e0f9c58070eb3d15ac124cb0aefcbb"  # header MAC
)
SEALED_SHA256 = "f877b58ec9a87ab28089f08ad9de73de887c2ace8288d24d8f3181c0859744d1"


def test_tree_digest_by_its_definition() -> None:
    leaves = hashlib.sha256(PLAINTEXT[:4040]).digest() + hashlib.sha256(PLAINTEXT[4040:]).digest()
    root = hashlib.sha256(b"veil-seal/v2 segment-tree\x00" + struct.pack(">QI", 5100, 4096) + leaves)
    assert root.hexdigest() == TREE_SHA256


def test_known_answer(tmp_path: Path) -> None:
    header = build_header(KEY, "kat", len(PLAINTEXT), bytes.fromhex(TREE_SHA256), 4096)
    assert header.raw.hex() == HEADER_HEX
    out = io.BytesIO()
    digest, sealed_hex = encrypt_stream(io.BytesIO(PLAINTEXT), out, KEY, header, salt=SALT, nonce_prefix=PREFIX)
    blob = out.getvalue()
    assert digest.hex() == TREE_SHA256
    assert sealed_hex == hashlib.sha256(blob).hexdigest() == SEALED_SHA256
    assert len(blob) == header.sealed_size == 109 + 40 + 5100 + 2 * 16
    assert blob[109:149] == b"\x28" + SALT + PREFIX
    (tmp_path / "kat.sealed").write_bytes(blob)
    with unseal_to_memfd(tmp_path / "kat.sealed", KEY, expected_tree_digest=TREE_SHA256) as mf:
        assert mf.read() == PLAINTEXT
    assert parse_header(bytes.fromhex(HEADER_HEX)).key_id == "kat"
