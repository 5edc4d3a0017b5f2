"""Attestation: per platform, abi (parse) -> verify (crypto) -> validate (policy) -> collect."""

from veil.attest.claims import Claims, Verdict

__all__ = ["Claims", "Verdict"]
