"""Many clients' nonces under one hardware report: a Merkle tree over the nonces (RFC 9162 §2.1).

A report is serialised through the security processor (milliseconds on SEV-SNP, tens of them for
a TDX quote), so a coordinator that made one per client would queue thousands of clients behind
its chip. Instead it collects the nonces that arrive while the previous report is being made,
puts the root of a Merkle tree over them into report_data, and hands each client its inclusion
path. A client recomputes the root from *its own* fresh nonce and the path; the report binds that
root, so it is as fresh for that client as a report over its nonce alone (a replayed answer was
made over a tree without this client's nonce, and no path leads from it to that root).

The tree is Certificate Transparency's (RFC 9162 §2.1.1, leaf = SHA-256(0x00 ‖ nonce), node =
SHA-256(0x01 ‖ left ‖ right), unbalanced on the right) and the verification is RFC 9162
§2.1.3.2's algorithm. Written here because no maintained Python package provides RFC 9162 proofs
over arbitrary leaves; it is tested against the RFC 6962 reference tree's roots.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from veil.errors import ParseError

MAX_BATCH = 4096  # nonces under one report; bounds the path a client accepts
MAX_PATH = 12  # ceil(log2(MAX_BATCH))
HASH_LEN = 32


def leaf_hash(nonce: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + nonce).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _levels(nonces: list[bytes]) -> list[list[bytes]]:
    """The tree bottom-up; an unpaired last node is carried up unchanged (RFC 9162's shape)."""
    if not nonces:
        raise ValueError("a tree needs at least one nonce")
    levels = [[leaf_hash(n) for n in nonces]]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [_node(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


@dataclass(frozen=True)
class InclusionProof:
    """Where one nonce sits in a batch: its index, the batch size, the sibling hashes bottom-up."""

    index: int
    size: int
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "size": self.size, "path": [p.hex() for p in self.path]}

    @classmethod
    def from_json(cls, raw: Any) -> "InclusionProof":
        try:
            index, size, path = raw["index"], raw["size"], raw["path"]
            if not (isinstance(index, int) and isinstance(size, int) and isinstance(path, list)):
                raise TypeError
            if not 0 < size <= MAX_BATCH or len(path) > MAX_PATH:
                raise ValueError
            hashes = tuple(bytes.fromhex(p) for p in path)
        except (KeyError, TypeError, ValueError):
            raise ParseError("attestation.bad_nonce_proof", "the nonce batch proof is malformed or too large") from None
        if any(len(h) != HASH_LEN for h in hashes):
            raise ParseError("attestation.bad_nonce_proof", "a nonce batch path entry is not a SHA-256 hash")
        return cls(index, size, hashes)


class NonceTree:
    """The tree over one batch: its root (for report_data) and each nonce's inclusion proof."""

    def __init__(self, nonces: list[bytes]) -> None:
        if len(nonces) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} nonces under one report")
        self._levels = _levels(nonces)

    @property
    def root(self) -> bytes:
        return self._levels[-1][0]

    def proof(self, index: int) -> InclusionProof:
        size = len(self._levels[0])
        if not 0 <= index < size:
            raise IndexError(index)
        path, i = [], index
        for level in self._levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):  # else the node was carried up: no hash at this level
                path.append(level[sibling])
            i >>= 1
        return InclusionProof(index, size, tuple(path))


def root_from_proof(nonce: bytes, proof: InclusionProof) -> bytes | None:
    """RFC 9162 §2.1.3.2: the root that ``proof`` leads to from ``nonce``, or None if it cannot be
    a valid path for its index and size. The caller compares the root with what the report binds."""
    if not 0 <= proof.index < proof.size:
        return None
    fn, sn = proof.index, proof.size - 1
    r = leaf_hash(nonce)
    for p in proof.path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None
