"""Attack: a key holder rearranges the weights' segments and seals them under a header that claims
the manifest's segment-tree pin.

The attacker controls the weights store and holds the model's data key (a sealer or an admin
key-holder who cannot sign manifests): every segment it writes authenticates, the header MAC is
valid and the header names the very tree digest the manifest pins, so AEAD alone accepts the file.
Swapping two segments, copying one over another, dropping the last one (with the plaintext size
shortened to match) or appending one all change the plaintext's segment tree, which the worker
recomputes on every core while it unseals: refused with ``seal.digest_mismatch``, and the memfd is
closed without reaching the engine. Fails with the tree comparison in unseal_to_memfd removed.
"""

from __future__ import annotations

import io
from pathlib import Path

from attacks.sealed_weights import SEG, Model
from veil.sealing.format import build_header
from veil.sealing.seal import encrypt_stream


def _sealed_by_key_holder(model: Model, segments: list[bytes]) -> bytes:
    plaintext = b"".join(segments)
    header = build_header(model.key, "model-key", len(plaintext), bytes.fromhex(model.header.tree_sha256), SEG)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(plaintext), out, model.key, header)
    return out.getvalue()


def test_rearranged_segments_under_the_pinned_tree_are_refused(tmp_path: Path) -> None:
    model = Model(tmp_path)
    assert model.loads((tmp_path / "model.sealed").read_bytes()) == model.plaintext  # the genuine file loads
    s = model.segments()
    attacks = {
        "swapped": s[:2] + [s[3], s[2]] + s[4:],
        "duplicated": s[:4] + [s[1]] + s[5:],
        "truncated": s[:-1],
        "extended": s + [s[1][:100]],
    }
    for name, segments in attacks.items():
        err = model.load(_sealed_by_key_holder(model, segments))
        assert err.reason == "seal.digest_mismatch", (name, err)
