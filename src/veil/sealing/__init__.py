"""Sealed model weights: a streaming AEAD format (Tink AES-GCM-HKDF segments under a Veil header)
and unsealing straight into a sealed memfd, so plaintext weights never reach persistent disk.

See docs/sealed-weights.md for the byte layout, the threat model and the reason codes.
"""

from veil.sealing.format import SealedHeader, default_key_id, parse_header
from veil.sealing.memfd import MemFile
from veil.sealing.seal import generate_data_key, plaintext_digests, seal_file
from veil.sealing.unseal import read_header, unseal_to_memfd

__all__ = [
    "MemFile",
    "SealedHeader",
    "default_key_id",
    "generate_data_key",
    "parse_header",
    "plaintext_digests",
    "read_header",
    "seal_file",
    "unseal_to_memfd",
]
