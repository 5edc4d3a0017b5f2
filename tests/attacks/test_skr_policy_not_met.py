"""Attack: a worker whose CVM does not meet the model key's Secure Key Release policy asks for the key.

The attacker controls the worker's host: the evidence JSON, the MAA token it presents (any token
a real MAA instance gave it, for any VM it runs) and the claims it would like the coordinator to
believe. The admins wrote the key's release policy in Azure Key Vault's SKR grammar (the Azure
tutorial's shape: SEV-SNP and "azure-compliant-cvm" attested by one MAA authority). Defence: the
coordinator evaluates the policy over the claims of the *verified* token only, with its issuer as
the authority (``release.skr_not_satisfied``); a token edited to say otherwise fails its signature
(``azure.maa_signature_invalid``). Targets are the coordinator's real objects (the registry's Azure
verifier with the manifest's reference values, then its release code) on Azure's real v2 sample;
the control run presents a compliant CVM's token. The same refusal by a real coordinator process,
to a worker process on the simulated Azure twin, is the last test of tests/system/test_azure_sim_e2e.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from attest_verdicts import AMD_CRLS, AZURE_AS_OF
from azure_fixtures import V2, V2_REPORT_DATA, maa_token, worker_reference
from veil.attest import api
from veil.attest.api import Binding, VerifyOptions
from veil.attest.sim.maa import SimMaa
from veil.attest.trust import TrustRoots
from veil.coordinator.release import evaluate
from veil.errors import VeilError
from veil.manifest import AzureReference, MaaReference, ReleasePolicy

AUTHORITY = "https://sharedeus2.eus2.attest.azure.net"
SKR = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": AUTHORITY,
            "allOf": [
                {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
            ],
        }
    ],
}
# the simulated MAA's tokens are simulated claims: the policy must say it accepts those
POLICY = ReleasePolicy(allow_simulated=True, skr=SKR)


@pytest.fixture(scope="module")
def maa() -> SimMaa:
    return SimMaa(issuer=AUTHORITY, not_before=AZURE_AS_OF - dt.timedelta(days=1))


def _release(maa: SimMaa, token: dict) -> tuple[bool, str]:  # type: ignore[type-arg]
    evidence = {"platform": "azure-snp-vtpm", "vtpm": V2, "maa": token}
    trust = TrustRoots.production().with_simulation(maa.root_fingerprint)
    options = VerifyOptions(Binding.to(V2_REPORT_DATA), trust, AZURE_AS_OF, AMD_CRLS)
    # the reference values accept any MAA instance's compliant-or-not tokens: the SKR policy decides
    ref = worker_reference(None).model_copy(update={"azure": AzureReference(maa=MaaReference(require_azure_compliant=False))})
    try:
        verified = api.appraise(evidence, [ref], options)
    except VeilError as err:
        return False, err.reason
    return evaluate(POLICY, verified.claims)


def test_control_compliant_cvm_gets_the_key(maa: SimMaa) -> None:
    assert _release(maa, maa_token(maa, now=AZURE_AS_OF)) == (True, "ok")


def test_non_compliant_cvm_refused(maa: SimMaa) -> None:
    token = maa_token(maa, now=AZURE_AS_OF, **{"x-ms-compliance-status": "not-compliant"})
    assert _release(maa, token) == (False, "release.skr_not_satisfied")


def test_token_of_another_authority_refused(maa: SimMaa) -> None:
    other = SimMaa(issuer="https://hosts-own.attest.azure.net", not_before=maa.not_before)
    other.root_key, other.key, other.root, other.cert, other.kid = maa.root_key, maa.key, maa.root, maa.cert, maa.kid
    assert _release(maa, maa_token(other, now=AZURE_AS_OF)) == (False, "release.skr_not_satisfied")


def test_claims_edited_into_the_token_refused(maa: SimMaa) -> None:
    token = maa_token(maa, now=AZURE_AS_OF, **{"x-ms-compliance-status": "not-compliant"})
    head, body, sig = token["token"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["x-ms-isolation-tee"]["x-ms-compliance-status"] = "azure-compliant-cvm"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert _release(maa, {**token, "token": f"{head}.{edited}.{sig}"}) == (False, "azure.maa_signature_invalid")
