"""Get a TDX quote on a live TD through the kernel's configfs-tsm interface, with its collateral.

configfs-tsm (:mod:`veil.attest.tsm`) with provider ``tdx_guest``: the TDX module's TDREPORT over
our 64 bytes of report data, turned into a quote by the host's quoting service. The PCS collateral
for the quote's FMSPC comes from the collateral cache (``veil collateral fetch --platform tdx``),
so the evidence verifies offline. The root is injectable so tests run on a fake tree.
Not yet run on real TDX hardware.
"""

from __future__ import annotations

from typing import Any

from veil.attest.tdx.evidence import TdxEvidence
from veil.attest.tsm import ConfigfsTsm
from veil.errors import ProtocolError

TDX_PROVIDER = "tdx_guest"


def collect_quote(report_data: bytes, *, tsm: ConfigfsTsm | None = None) -> bytes:
    """Ask the TDX module (through configfs-tsm) for a quote binding ``report_data`` (64 bytes)."""
    if len(report_data) != 64:
        raise ProtocolError("tdx.collect_failed", "report_data must be exactly 64 bytes")
    return (tsm or ConfigfsTsm()).report(report_data, provider=TDX_PROVIDER, prefix="tdx").outblob


def fmspc_of(quote: bytes) -> str:
    """The FMSPC (lower-case hex) in the quote's PCK certificate: which collateral it needs."""
    import dcap_qvl

    from veil.attest.tdx.abi import parse_quote

    try:
        return str(dcap_qvl.parse_quote(parse_quote(quote).raw).fmspc()).lower()
    except ValueError as exc:
        raise ProtocolError("tdx.collect_failed", f"the quote names no FMSPC: {exc}") from None


def collect_evidence(report_data: bytes, cache: Any, *, tsm: ConfigfsTsm | None = None) -> TdxEvidence:
    """A quote for ``report_data`` plus the cached PCS collateral for its FMSPC (what a TD serves).

    The collateral must be in the cache: clients verify offline, so evidence never leaves without it.
    """
    quote = collect_quote(report_data, tsm=tsm)
    return with_cached_collateral(quote, cache)


def with_cached_collateral(quote: bytes, cache: Any) -> TdxEvidence:
    fmspc = fmspc_of(quote)
    collateral = cache.read_tdx(fmspc)
    if collateral is None:
        raise ProtocolError(
            "tdx.collateral_missing",
            f"no PCS collateral cached for FMSPC {fmspc} (run `veil collateral fetch --platform tdx` online)",
        )
    return TdxEvidence(quote, collateral)
