"""Attack: the weights store serves a file in the old format (version 1, a whole-file SHA-256 pin),
or the worker is given a sealed model entry that pins no segment tree.

The attacker controls the weights store (it may hold an old sealing of these weights under the same
key) or a manifest entry written for the old format. The worker refuses a version-1 header with
``seal.unsupported_version`` (the message says to re-seal) before it derives a key, and a sealed
entry without ``tree_sha256`` with ``seal.unpinned`` before it reads the file: no path unseals
weights that nothing in the manifest pins. Fails with the version-1 refusal or the unpinned check
removed.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from attacks.sealed_weights import Model
from veil.sealing.format import MAC_SIZE, _hkdf


def test_version_1_file_is_refused(tmp_path: Path) -> None:
    model = Model(tmp_path)
    blob = (tmp_path / "model.sealed").read_bytes()
    hlen = len(model.header.raw)
    body = blob[:8] + b"\x00\x01" + blob[10 : hlen - MAC_SIZE]  # a validly MACed version-1 header
    mac = hmac.new(_hkdf(model.key, b"veil-seal/v1 header-mac"), body, hashlib.sha256).digest()
    err = model.load(body + mac + blob[hlen:])
    assert err.reason == "seal.unsupported_version" and "re-seal" in err.message


def test_sealed_entry_without_a_tree_pin_is_refused(tmp_path: Path) -> None:
    model = Model(tmp_path)
    unpinned = model.entry.model_copy(update={"tree_sha256": None})
    assert model.load((tmp_path / "model.sealed").read_bytes(), unpinned).reason == "seal.unpinned"
