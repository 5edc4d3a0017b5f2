"""Azure Key Vault Secure Key Release grammar: the Azure tutorial's key-release-policy.json shape
works unchanged as a Veil release policy, over a verified MAA token's claims."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from attest_verdicts import AMD_CRLS, AZURE_AS_OF
from azure_fixtures import V2, V2_REPORT_DATA, maa_token, worker_reference
from veil.attest import api
from veil.attest.api import Binding, VerifyOptions
from veil.attest.azure.skr import evaluate, parse_policy
from veil.attest.sim.maa import SimMaa
from veil.attest.trust import TrustRoots
from veil.coordinator.release import evaluate as release
from veil.errors import ParseError
from veil.manifest import ReleasePolicy

# The shape of the key-release-policy.json in Azure's "Secure Key Release with confidential VMs"
# tutorial (and Azure/confidential-computing-cvm-guest-attestation's SKR sample): one MAA authority,
# the TEE type and Azure's compliance verdict.
TUTORIAL = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": "https://sharedeus2.eus2.attest.azure.net",
            "allOf": [
                {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
            ],
        }
    ],
}
CLAIMS = {
    "x-ms-attestation-type": "azurevm",
    "x-ms-isolation-tee": {
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-cvm",
        "x-ms-sevsnpvm-vmpl": 0,
    },
}
AUTH = "https://sharedeus2.eus2.attest.azure.net"


def test_tutorial_policy_over_token_claims() -> None:
    assert evaluate(TUTORIAL, {AUTH: CLAIMS})
    assert evaluate(TUTORIAL, {AUTH.upper() + "/": CLAIMS})  # authorities compare by URL, not spelling
    assert not evaluate(TUTORIAL, {"https://other.attest.azure.net": CLAIMS})  # another authority's word
    not_compliant = copy.deepcopy(CLAIMS)
    not_compliant["x-ms-isolation-tee"]["x-ms-compliance-status"] = "not-compliant"
    assert not evaluate(TUTORIAL, {AUTH: not_compliant})
    assert not evaluate(TUTORIAL, {})


def test_nested_any_of_and_condition_value_variant() -> None:
    policy = {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": AUTH,
                "allOf": [
                    {"claim": "x-ms-attestation-type", "condition": "equals", "value": "azurevm"},
                    {
                        "anyOf": [
                            {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "tdxvm"},
                            {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
                        ]
                    },
                    {"claim": "x-ms-isolation-tee.x-ms-sevsnpvm-vmpl", "equals": 0},
                ],
            }
        ],
    }
    assert evaluate(policy, {AUTH: CLAIMS})
    wrong_type = copy.deepcopy(policy)
    wrong_type["anyOf"][0]["allOf"][2]["equals"] = "0"  # "0" is not 0
    assert not evaluate(wrong_type, {AUTH: CLAIMS})


@pytest.mark.parametrize(
    "bad",
    [
        {"anyOf": []},
        {"version": "9", "anyOf": [{"authority": AUTH, "allOf": [{"claim": "a", "equals": 1}]}]},
        {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "a", "equals": 1}]}]},
        {"version": "1.0.0", "anyOf": [{"authority": AUTH, "allOf": [{"claim": "a", "condition": "greater", "value": 1}]}]},
        {"version": "1.0.0", "anyOf": [{"authority": AUTH, "allOf": [{"claim": "a", "equals": 1, "x": 2}]}]},
    ],
)
def test_malformed_policies_refused(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ParseError) as exc:
        parse_policy(bad)
    assert exc.value.reason == "release.skr_malformed"


def test_a_bare_skr_document_is_a_release_policy() -> None:
    policy = ReleasePolicy.model_validate(TUTORIAL)
    assert policy.skr == TUTORIAL and not policy.allow_simulated
    with pytest.raises(ValueError):
        ReleasePolicy.model_validate({"version": "1.0.0", "anyOf": [{"authority": AUTH}]})


def test_release_over_a_verified_token() -> None:
    """End to end over real objects: the real v2 CVM evidence, an MAA token for it, the registry's
    verifier, then the coordinator's release decision with the tutorial policy (authority: the
    token's issuer)."""
    maa = SimMaa(issuer=AUTH, not_before=AZURE_AS_OF - dt.timedelta(days=1))
    evidence = {"platform": "azure-snp-vtpm", "vtpm": V2, "maa": maa_token(maa, now=AZURE_AS_OF)}
    options = VerifyOptions(
        Binding.to(V2_REPORT_DATA), TrustRoots.production().with_simulation(maa.root_fingerprint), AZURE_AS_OF, AMD_CRLS
    )
    verified = api.appraise(evidence, [worker_reference(maa)], options)
    claims = verified.claims
    assert claims.simulated  # the token's signer is a simulation root
    assert release(ReleasePolicy(allow_simulated=True, skr=TUTORIAL), claims) == (True, "ok")
    assert release(ReleasePolicy.model_validate(TUTORIAL), claims) == (False, "release.simulated_refused")
    other = copy.deepcopy(TUTORIAL)
    other["anyOf"][0]["allOf"][0]["equals"] = "tdxvm"
    assert release(ReleasePolicy(allow_simulated=True, skr=other), claims) == (False, "release.skr_not_satisfied")
