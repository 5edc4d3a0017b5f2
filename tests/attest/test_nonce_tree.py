"""The nonce tree behind batched attestation (veil.attest.nonce_tree): RFC 9162 §2.1 roots and
inclusion proofs, against the RFC 6962 reference tree (Certificate Transparency's test data: the
roots of its 8 reference leaves and one inclusion path), and properties over random batches."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.attest.nonce_tree import MAX_BATCH, InclusionProof, NonceTree, root_from_proof
from veil.errors import ParseError

# RFC 6962 reference leaves and the tree heads of their first 1..8 leaves (as used by Certificate
# Transparency's implementations' tests).
LEAVES = [
    bytes.fromhex(x) for x in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# the inclusion path of the first leaf in the 8-leaf tree
PATH_0_OF_8 = [
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
]


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_match_the_rfc6962_reference_tree(n: int) -> None:
    assert NonceTree(LEAVES[:n]).root.hex() == ROOTS[n - 1]


def test_inclusion_path_matches_the_reference() -> None:
    proof = NonceTree(LEAVES).proof(0)
    assert [p.hex() for p in proof.path] == PATH_0_OF_8
    assert root_from_proof(LEAVES[0], proof).hex() == ROOTS[7]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=16, max_size=64), min_size=1, max_size=300, unique=True), st.data())
def test_every_leaf_proves_and_nothing_else_does(nonces: list[bytes], data: st.DataObject) -> None:
    tree = NonceTree(nonces)
    i = data.draw(st.integers(0, len(nonces) - 1))
    proof = tree.proof(i)
    assert root_from_proof(nonces[i], proof) == tree.root
    assert len(proof.path) <= max(1, (len(nonces) - 1).bit_length())
    assert root_from_proof(nonces[i] + b"x", proof) != tree.root  # another nonce
    if len(nonces) > 1:
        j = (i + 1) % len(nonces)
        assert root_from_proof(nonces[j], proof) != tree.root  # another client's path
        moved = InclusionProof(j, proof.size, proof.path)
        assert root_from_proof(nonces[i], moved) != tree.root  # the right path under another index
    if proof.path:
        bad = (bytes(32),) + proof.path[1:]
        assert root_from_proof(nonces[i], InclusionProof(i, proof.size, bad)) != tree.root
        longer = InclusionProof(i, proof.size, proof.path + (bytes(32),))
        assert root_from_proof(nonces[i], longer) is None  # a path longer than the tree allows


def test_out_of_range_index_is_no_proof() -> None:
    assert root_from_proof(b"n" * 32, InclusionProof(3, 3, ())) is None
    with pytest.raises(ValueError):
        NonceTree([bytes([i % 256]) * 32 for i in range(MAX_BATCH + 1)])


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        {"index": 0, "size": 0, "path": []},
        {"index": "0", "size": 1, "path": []},
        {"index": 0, "size": MAX_BATCH + 1, "path": []},
        {"index": 0, "size": 2, "path": ["zz"]},
        {"index": 0, "size": 2, "path": ["00" * 31]},
        {"index": 0, "size": 8, "path": ["00" * 32] * 13},
    ],
)
def test_malformed_proofs_are_refused(raw) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError) as info:
        InclusionProof.from_json(raw)
    assert info.value.reason == "attestation.bad_nonce_proof"
