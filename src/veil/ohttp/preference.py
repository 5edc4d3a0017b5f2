"""Which key configuration and suite Veil's own clients encrypt to: X-Wing when offered.

A gateway serves X25519 first so that standard clients, which take the first entry, work
unchanged; Veil's clients (SDK, proxy, CLI, through ``OhttpTransport``) instead choose by KEM,
post-quantum first. This is the one place that preference lives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from veil.errors import ProtocolError
from veil.ohttp.keyconfig import AEAD_NAMES, KDF_NAMES, KEM_NAMES, KEM_X25519_SHA256, KEM_XWING, KeyConfig, SymmetricSuite

#: Most preferred first. X-Wing stays confidential if either ML-KEM-768 or X25519 holds.
KEM_PREFERENCE = (KEM_XWING, KEM_X25519_SHA256)
POST_QUANTUM_KEMS = frozenset({KEM_XWING})


@dataclass(frozen=True)
class ChosenSuite:
    """A key configuration and the (KDF, AEAD) pair a client will use with it."""

    config: KeyConfig
    suite: SymmetricSuite

    @property
    def post_quantum(self) -> bool:
        return self.config.kem_id in POST_QUANTUM_KEMS

    @property
    def name(self) -> str:
        """E.g. ``X-Wing (MLKEM768-X25519) / HKDF-SHA256 / AES-256-GCM``."""
        return " / ".join((KEM_NAMES[self.config.kem_id], KDF_NAMES[self.suite.kdf_id], AEAD_NAMES[self.suite.aead_id]))

    def to_json(self) -> dict[str, Any]:
        return {
            "key_id": self.config.key_id,
            "kem_id": self.config.kem_id,
            "kdf_id": self.suite.kdf_id,
            "aead_id": self.suite.aead_id,
            "name": self.name,
            "post_quantum": self.post_quantum,
        }


def choose_suite(configs: Iterable[KeyConfig], suite: SymmetricSuite | None = None) -> ChosenSuite:
    """Veil's choice among ``configs``: the most preferred KEM (ties: the first listed), then the
    first (KDF, AEAD) pair that configuration lists and Veil implements, or ``suite`` where given
    (then only configurations listing it qualify). Nothing usable: ``ohttp.unsupported_suite``."""
    listed = list(configs)
    for kem_id in KEM_PREFERENCE:
        for config in listed:
            if config.kem_id != kem_id or (suite is not None and not config.accepts(suite)):
                continue
            try:
                return ChosenSuite(config, config.select_suite(suite))
            except ProtocolError:
                continue
    raise ProtocolError("ohttp.unsupported_suite", "no offered key configuration has a suite this client implements")
