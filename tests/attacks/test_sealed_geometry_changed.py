"""Attack: the sealed header claims another segment size or segment count than the weights were
sealed with.

Without the key (the weights store, the network): editing the segment size or plaintext size field
breaks the header MAC: ``seal.tampered`` before anything is decrypted. With the key (a key holder
re-sealing the same plaintext in 8 KiB segments, or declaring fewer bytes): every segment
authenticates, but the tree digest commits to the segment size and the plaintext size, so the
header's tree is not the one the manifest pins: ``seal.digest_mismatch`` before decryption; and a
header that keeps claiming the pinned tree is refused once the recomputed tree differs. Fails with
the manifest-pin comparison or the recomputed-tree comparison in unseal_to_memfd removed.
"""

from __future__ import annotations

import io
from pathlib import Path

from attacks.sealed_weights import SEG, SIZE, Model
from veil.sealing import seal_file
from veil.sealing.format import build_header
from veil.sealing.seal import encrypt_stream


def _flip(blob: bytes, offset: int) -> bytes:
    return blob[:offset] + bytes([blob[offset] ^ 0x01]) + blob[offset + 1 :]


def test_header_geometry_edited_without_the_key(tmp_path: Path) -> None:
    model = Model(tmp_path)
    blob = (tmp_path / "model.sealed").read_bytes()
    for offset in (16, 17, 25):  # segment size (bytes 14-17), plaintext size (18-25)
        assert model.load(_flip(blob, offset)).reason == "seal.tampered"


def test_other_geometry_sealed_by_a_key_holder(tmp_path: Path) -> None:
    model = Model(tmp_path)
    other = seal_file(tmp_path / "model.bin", tmp_path / "other.sealed", model.key, "model-key", segment_size=2 * SEG)
    assert other.plaintext_sha256 == model.header.plaintext_sha256  # the same weights, byte for byte
    assert model.load((tmp_path / "other.sealed").read_bytes()).reason == "seal.digest_mismatch"
    for segment_size, size in ((2 * SEG, SIZE), (SEG, SIZE - 1)):  # claiming the pinned tree anyway
        header = build_header(model.key, "model-key", size, bytes.fromhex(model.header.tree_sha256), segment_size)
        out = io.BytesIO()
        encrypt_stream(io.BytesIO(model.plaintext[:size]), out, model.key, header)
        assert model.load(out.getvalue()).reason == "seal.digest_mismatch", (segment_size, size)
