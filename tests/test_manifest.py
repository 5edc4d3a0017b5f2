"""Manifest signing and the append-only history chain."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.errors import ParseError, PolicyError, VerificationError
from veil.manifest import (
    Manifest,
    ModelEntry,
    ReferenceValues,
    ReleasePolicy,
    SignedManifest,
    check_successor,
    public_key_hex,
    sign_manifest,
    verify_history,
)

MEAS = "ab" * 48


def make_manifest(admin: Ed25519PrivateKey, **kw) -> Manifest:
    refs = [ReferenceValues(platform="sim-snp", measurements=[MEAS])]
    return Manifest(coordinator=refs, workers=refs, admin_keys=[public_key_hex(admin)], **kw)


def test_digest_is_canonical_and_stable() -> None:
    admin = Ed25519PrivateKey.generate()
    m = make_manifest(admin)
    again = Manifest.model_validate_json(m.model_dump_json(indent=4))
    assert m.digest() == again.digest()
    assert make_manifest(admin, settings={"a": 1}).digest() != m.digest()


def test_fields_added_later_are_left_out_while_unset() -> None:
    """Manifests signed before a field existed keep their canonical bytes: each later field is
    absent from the JSON while unset, and present once set."""
    admin = Ed25519PrivateKey.generate()
    later = {
        ReferenceValues: ("snp", "tdx", "gpu", "azure"),
        ModelEntry: ("tree_sha256",),
        ReleasePolicy: ("skr",),
        Manifest: ("tenants", "padding", "gateway", "coordinator_identity"),
    }
    unset = {
        ReferenceValues: ReferenceValues(platform="sim-snp", measurements=[MEAS]),
        ModelEntry: ModelEntry(name="m", sha256="00" * 32),
        ReleasePolicy: ReleasePolicy(),
        Manifest: make_manifest(admin),
    }
    for model, names in later.items():
        assert not set(names) & set(unset[model].model_dump(mode="json")), model
    assert b"tenants" not in unset[Manifest].canonical() and b"coordinator_identity" not in unset[Manifest].canonical()
    assert "tree_sha256" in ModelEntry(name="m", sha256="00" * 32, tree_sha256="11" * 32).model_dump()
    assert "coordinator_identity" in make_manifest(admin, coordinator_identity="22" * 32).model_dump()


def test_chain_accepts_signed_successors() -> None:
    a1, a2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first = sign_manifest(make_manifest(a1), [a1], None)
    check_successor(None, first)
    # rotate admin: signed by the previous admin a1, names a2 as the new admin
    second = sign_manifest(make_manifest(a2), [a1], first.digest.hex())
    check_successor(first, second)
    third = sign_manifest(make_manifest(a2, settings={"x": 1}), [a2], second.digest.hex())
    assert verify_history([first, second, third]) == third.digest


def test_update_signed_by_non_admin_is_refused() -> None:
    admin, mallory = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    first = sign_manifest(make_manifest(admin), [admin], None)
    evil = sign_manifest(make_manifest(mallory), [mallory], first.digest.hex())
    with pytest.raises(VerificationError) as exc:
        check_successor(first, evil)
    assert exc.value.reason == "manifest.unsigned"


def test_tampered_manifest_signature_fails() -> None:
    admin = Ed25519PrivateKey.generate()
    first = sign_manifest(make_manifest(admin), [admin], None)
    tampered = SignedManifest(
        manifest=make_manifest(admin, settings={"injected": True}), previous=None, signatures=first.signatures
    )
    with pytest.raises(VerificationError):
        check_successor(None, tampered)


def test_fork_and_rollback_are_refused() -> None:
    admin = Ed25519PrivateKey.generate()
    first = sign_manifest(make_manifest(admin), [admin], None)
    second = sign_manifest(make_manifest(admin, settings={"v": 2}), [admin], first.digest.hex())
    # an entry that does not name the current head (fork off the first, or replay of the first)
    fork = sign_manifest(make_manifest(admin, settings={"v": "fork"}), [admin], first.digest.hex())
    with pytest.raises(PolicyError) as exc:
        check_successor(second, fork)
    assert exc.value.reason == "manifest.bad_chain"
    with pytest.raises(PolicyError):
        verify_history([first, second, fork])
    with pytest.raises(PolicyError):
        check_successor(second, first)  # rollback


def test_first_manifest_cannot_claim_predecessor() -> None:
    admin = Ed25519PrivateKey.generate()
    entry = sign_manifest(make_manifest(admin), [admin], "00" * 32)
    with pytest.raises(PolicyError):
        check_successor(None, entry)


@pytest.mark.parametrize("raw", [b"{", b"[]", b'{"manifest": {}}', b"x" * (2 << 20)])
def test_malformed_manifest_is_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        SignedManifest.parse(raw)
