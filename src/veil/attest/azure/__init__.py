"""Azure confidential VMs: vTPM + HCL evidence (SEV-SNP and TDX), MAA tokens, Key Vault SKR policies.

Platforms: ``azure-snp-vtpm`` and ``azure-tdx-vtpm`` (hardware report ▸ HCL runtime claims ▸
vTPM attestation key ▸ TPM quote with the verifier's nonce), their SIMULATED twins
``sim-azure-snp``/``sim-azure-tdx``, and ``azure-maa`` (a JWT signed by Microsoft Azure
Attestation). ``platform`` holds the registry's verifiers (typed errors, see docs/attestation.md);
``hcl``/``tpm``/``evidence`` parse, ``verify`` and ``maa`` check signatures, ``validate`` and
``skr`` are policy, ``collect`` gathers evidence on a live CVM.
"""

from veil.attest.azure.evidence import VtpmEvidence, parse_evidence
from veil.attest.azure.validate import AzureVtpmPolicy, MaaPolicy

__all__ = ["AzureVtpmPolicy", "MaaPolicy", "VtpmEvidence", "parse_evidence"]
