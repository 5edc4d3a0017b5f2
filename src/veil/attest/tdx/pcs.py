"""Intel PCS/PCCS collateral for a TDX quote: fetched once, online, through dcap-qvl.

dcap-qvl's ``get_collateral`` reads the quote's PCK chain (its FMSPC and CA), then fetches the TCB
info and QE identity for that FMSPC, the PCK CRL and the root CA CRL from a PCS or PCCS
(``https://api.trustedservices.intel.com``, or a cloud's PCCS). The result is Veil's collateral
format (Intel PCS field names, ``veil.attest.collateral``'s ``intel/tdx/<fmspc>/collateral.json``).
Nothing here is trusted until it verifies with the quote (``veil collateral fetch`` checks that).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from veil.attest.tdx.verify import COLLATERAL_FIELDS
from veil.errors import VerificationError

INTEL_PCS_URL = "https://api.trustedservices.intel.com"


def fetch_collateral(quote: bytes, pccs_url: str = INTEL_PCS_URL) -> dict[str, Any]:
    """The PCS collateral for ``quote`` (online; ``tdx.pcs_unavailable`` when the fetch fails)."""
    import dcap_qvl

    from veil.attest.tdx.abi import parse_quote

    raw = parse_quote(quote).raw

    async def get() -> Any:  # dcap-qvl's binding needs a running event loop to start its request
        return await dcap_qvl.get_collateral(pccs_url.rstrip("/"), raw)

    try:
        out = json.loads(asyncio.run(get()).to_json())
    except ValueError as exc:
        raise VerificationError("tdx.pcs_unavailable", f"cannot fetch collateral from {pccs_url}: {exc}") from None
    return {f: out[f] for f in COLLATERAL_FIELDS}
