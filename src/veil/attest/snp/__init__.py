"""AMD SEV-SNP: report ABI, VCEK/VLEK chains to pinned ARKs, policy, collection.

Layers as in go-sev-guest: ``abi`` parses, ``verify`` checks signatures, chains and revocation,
``validate`` applies the policy, ``collect`` gets a report on a live guest, ``kds`` builds AMD KDS
URLs. ``platform.SEV_SNP`` ties them into the one attestation API (:mod:`veil.attest.api`).
"""

from __future__ import annotations

from veil.attest.snp.abi import Report, TcbVersion, parse_report
from veil.attest.snp.evidence import SnpEvidence
from veil.attest.snp.validate import SnpPolicy

__all__ = ["PLATFORM", "Report", "SnpEvidence", "SnpPolicy", "TcbVersion", "parse_report"]

PLATFORM = "sev-snp"
