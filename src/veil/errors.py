"""Errors that carry a stable, machine-readable reason code.

Every refusal in Veil (bad evidence, a tampered message, a replayed nonce...) raises one of these,
so callers, logs and JSON outputs can say *why* without parsing English. Reason codes are
dotted lower-case strings such as ``snp.signature_invalid``; docs/reason-codes.md lists them.
"""

from __future__ import annotations


class VeilError(Exception):
    """Base class: ``reason`` is the stable code, ``message`` the human explanation."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}


class ParseError(VeilError):
    """A binary or JSON structure could not be read (malformed, truncated, oversized)."""


class VerificationError(VeilError):
    """Cryptographic verification failed: signature, certificate chain, CRL, collateral, time."""


class PolicyError(VeilError):
    """Genuine evidence that the policy refuses: debug guest, wrong measurement, old TCB..."""


class ProtocolError(VeilError):
    """A protocol message was refused: unknown key id, bad nonce, tampered ciphertext..."""
