"""Azure CVM vTPM evidence verification: hardware report, HCL binding, TPM quote, PCRs, nonce.

The chain of trust: the hardware report (SEV-SNP, signed by the VCEK; or a TDX TDREPORT whose
TD quote is signed through Intel's PCK chain) carries in report_data the hash of the HCL's runtime
claims; those claims hold the vTPM attestation key HCLAkPub; that key signs the TPM quote, whose
extraData is the verifier's nonce and whose PCR digest covers the PCR values sent alongside.
Each link below fails with its own reason code. Policy lives in validate.py.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
import binascii
import hashlib
import hmac
from typing import Any, Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from veil.attest.azure.evidence import TpmQuote, VtpmEvidence
from veil.attest.azure.hcl import HclReport
from veil.attest.azure.tpm import TPM_ALG_SHA256, TpmsAttest
from veil.attest.api import VerifiedEvidence, VerifyOptions
from veil.attest.claims import Claims
from veil.attest.tdx.abi import parse_td_report
from veil.errors import ParseError, VerificationError

# Verifies the hardware report inside the HCL report (bound to the runtime claims) with its
# platform's verifier.
HardwareVerifier = Callable[[VtpmEvidence, "VerifyOptions"], "VerifiedEvidence"]


def _b64url_int(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value:
        raise ParseError("azure.ak_malformed", f"HCLAkPub {what} missing")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ParseError("azure.ak_malformed", f"HCLAkPub {what} is not base64url") from exc
    return int.from_bytes(raw, "big")


def ak_public_key(jwk: dict[str, Any]) -> rsa.RSAPublicKey:
    """The RSA key of an HCLAkPub JWK (Azure vTPM attestation keys are RSA-2048)."""
    if jwk.get("kty") != "RSA":
        raise ParseError("azure.ak_malformed", f"HCLAkPub key type {jwk.get('kty')!r}")
    n, e = _b64url_int(jwk.get("n"), "modulus"), _b64url_int(jwk.get("e"), "exponent")
    if n.bit_length() < 2048 or e < 3 or e % 2 == 0:
        raise ParseError("azure.ak_malformed", "HCLAkPub is not a sane RSA key (>= 2048 bits)")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise ParseError("azure.ak_malformed", str(exc)) from exc


def verify_tpm_signature(quote: TpmQuote, ak: rsa.RSAPublicKey) -> None:
    """The quote message is signed by the vTPM AK: RSASSA-PKCS1-v1_5 over SHA-256."""
    try:
        ak.verify(quote.signature, quote.message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature as exc:
        raise VerificationError("azure.tpm_signature_invalid", "TPM quote is not signed by the HCL's attestation key") from exc


def check_pcr_digest(quote: TpmQuote) -> dict[int, bytes]:
    """SHA-256 over the selected PCR values (ascending index) must equal the quote's pcrDigest."""
    selected: list[int] = []
    for sel in quote.attest.pcr_selections:
        if sel.hash_alg != TPM_ALG_SHA256:
            raise VerificationError("azure.pcr_bank_unsupported", f"PCR bank {sel.hash_alg:#06x}")
        selected.extend(sel.pcrs)
    if not selected:
        raise VerificationError("azure.pcr_selection_empty", "the quote covers no PCR")
    if len(set(selected)) != len(selected) or max(selected) >= len(quote.pcrs):
        raise VerificationError("azure.pcr_values_missing", "the quote selects PCRs not sent")
    if any(len(quote.pcrs[i]) != 32 for i in selected):
        raise VerificationError("azure.pcr_values_missing", "a selected PCR is not 32 bytes")
    digest = hashlib.sha256(b"".join(quote.pcrs[i] for i in sorted(selected))).digest()
    if not hmac.compare_digest(digest, quote.attest.pcr_digest):
        raise VerificationError("azure.pcr_digest_mismatch", "PCR values differ from the quote")
    return {i: quote.pcrs[i] for i in sorted(selected)}


def check_nonce(attest: TpmsAttest, nonce: bytes) -> None:
    if not hmac.compare_digest(attest.extra_data, nonce):
        raise VerificationError("azure.nonce_mismatch", "TPM quote extraData is not this nonce")


def check_hcl_binding(hcl: HclReport, hw_report_data: bytes) -> None:
    """report_data = hash(runtime claims) ‖ zeros: the hardware vouches for HCLAkPub."""
    digest = hcl.var_data_digest()
    if len(hw_report_data) != 64 or not hmac.compare_digest(hw_report_data[: len(digest)], digest):
        raise VerificationError("azure.hcl_binding_mismatch", "hardware report_data does not hash the runtime claims")
    if any(hw_report_data[len(digest) :]):
        raise VerificationError("azure.hcl_binding_mismatch", "report_data tail is not zero")


def hcl_report_data(hcl: HclReport) -> bytes:
    """What the hardware report's report_data must be: the runtime claims' hash, zero-padded."""
    return hcl.var_data_digest().ljust(64, b"\0")


def tdx_hardware(collateral: dict[str, Any] | None) -> HardwareVerifier:
    """Hardware verifier for Azure TDX CVMs: the TD quote (dcap-qvl, veil.attest.tdx) must verify,
    bind the HCL runtime claims and quote the HCL's TDREPORT."""
    from veil.attest.tdx.evidence import TdxEvidence
    from veil.attest.tdx.platform import verify_evidence

    def verify(evidence: VtpmEvidence, options: VerifyOptions) -> VerifiedEvidence:
        if evidence.td_quote is None:
            raise ParseError("azure.td_quote_missing", "TDX CVM evidence carries no td_quote")
        with _hcl_binding():
            verified = verify_evidence(TdxEvidence(evidence.td_quote, collateral), _bound_to_hcl(options, evidence))
        report = parse_td_report(evidence.hcl.td_report)
        body = verified.native.quote.body
        pairs = [
            (report.report_data, body.report_data),
            (report.mr_td, body.mr_td),
            (report.rtmrs, body.rtmrs),
            (report.td_attributes, body.td_attributes),
            (report.xfam, body.xfam),
            (report.mr_seam, body.mr_seam),
        ]
        if any(a != b for a, b in pairs):
            raise VerificationError("azure.td_quote_mismatch", "TD quote is not of the HCL TDREPORT")
        return verified

    return verify


def snp_hardware(chain_pem: bytes | None = None, crl: bytes | None = None) -> HardwareVerifier:
    """Hardware verifier for Azure SNP CVMs: the SEV-SNP report inside the HCL report through
    veil.attest.snp (signature, VCEK chain to the pinned ARK or a trusted simulation root, the
    required CRL from the evidence or the collateral cache), bound to the HCL runtime claims.

    ``chain_pem`` is ASK then ARK; when None, AMD's own for the VCEK's product (shipped with Veil).
    """
    from veil.attest.snp.evidence import SnpEvidence
    from veil.attest.snp.platform import verify_evidence

    def verify(evidence: VtpmEvidence, options: VerifyOptions) -> VerifiedEvidence:
        if evidence.vcek is None:
            raise ParseError("azure.vcek_missing", "SNP CVM evidence carries no VCEK")
        snp = SnpEvidence(evidence.hcl.hw_report, evidence.vcek, chain_pem or b"", crl)
        with _hcl_binding():
            return verify_evidence(snp, _bound_to_hcl(options, evidence))

    return verify


@contextmanager
def _hcl_binding() -> Iterator[None]:
    """The hardware verifier's binding refusal, said in Azure's terms."""
    try:
        yield
    except VerificationError as err:
        if err.reason != "binding.report_data_mismatch":
            raise
        raise VerificationError("azure.hcl_binding_mismatch", "hardware report_data does not hash the runtime claims") from None


def _bound_to_hcl(options: VerifyOptions, evidence: VtpmEvidence) -> VerifyOptions:
    """The hardware report must bind the HCL runtime claims (their hash in report_data[0:32],
    zeros after): the hardware vouches for HCLAkPub and the user-data."""
    import dataclasses

    from veil.attest.api import Binding

    return dataclasses.replace(options, binding=Binding.to(hcl_report_data(evidence.hcl)))


def verify_vtpm(
    evidence: VtpmEvidence,
    nonce: bytes,
    hardware: HardwareVerifier,
    *,
    platform: str,
    options: VerifyOptions,
) -> tuple[Claims, VerifiedEvidence]:
    """Verify every link from hardware report to TPM quote; return the CVM's claims and the
    hardware's own verified evidence (its checks, for reports)."""
    hw_verified = hardware(evidence, options)
    hw = hw_verified.claims
    check_hcl_binding(evidence.hcl, hw.report_data)
    ak_jwk = evidence.hcl.ak_jwk()
    verify_tpm_signature(evidence.tpm_quote, ak_public_key(ak_jwk))
    pcrs = check_pcr_digest(evidence.tpm_quote)
    check_nonce(evidence.tpm_quote.attest, nonce)
    attest = evidence.tpm_quote.attest
    # v2 layouts (Veil's, Trustee's) also put the report_data in the runtime claims' user-data,
    # zero-padded to 64 bytes: then the hardware report itself binds it (through the HCL hash)
    user_data_bound = len(nonce) <= 64 and hmac.compare_digest(evidence.hcl.user_data, nonce.ljust(64, b"\0"))
    vm_config = evidence.hcl.runtime.get("vm-configuration", {})
    details = {
        **hw.details,
        "hardware_platform": hw.platform,
        "hw_report_data": hw.report_data.hex(),
        "hcl_report_type": evidence.hcl.platform,
        "vm_configuration": vm_config if isinstance(vm_config, dict) else {},
        "ak_pub_n_sha256": hashlib.sha256(str(ak_jwk.get("n", "")).encode()).hexdigest(),
        "tpm_nonce": attest.extra_data.hex(),
        "tpm_clock": attest.clock,
        "tpm_reset_count": attest.reset_count,
        "tpm_firmware_version": attest.firmware_version,
        "pcrs": {str(i): v.hex() for i, v in pcrs.items()},
        "user_data_bound": user_data_bound,
        "evidence_version": evidence.version,
    }
    claims = Claims(
        platform=platform,
        measurement=hw.measurement,
        report_data=evidence.hcl.user_data,
        debug=hw.debug,
        simulated=hw.simulated,
        tcb=dict(hw.tcb),
        details=details,
    )
    return claims, hw_verified
