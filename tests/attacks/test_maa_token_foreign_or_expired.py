"""Attack: a worker's host backs its CVM evidence with an MAA token from a signer of its choosing,
or with an old, expired token.

The attacker controls the worker's host: the evidence JSON (so the token and the "/certs" JWKS
that comes with it) and the network to any MAA-like service it runs itself. It wants the
coordinator to accept claims no pinned Microsoft Azure Attestation instance made (its own signing
chain), or claims MAA made once and no longer vouches for (an expired token). Defence: the token's
signing certificate must chain to a root pinned in the manifest (``azure.maa_untrusted_root``:
the JWKS is never a trust anchor), the token must be current (``azure.maa_token_expired``) and
must attest this evidence's runtime claims (``azure.maa_binding_mismatch``). Targets are the
coordinator's real objects (the registry's Azure verifier with the manifest's reference values);
a coordinator process would need evidence over its fresh challenge, which only real Azure
hardware or the simulated twin produces. The control run pins the signer and sends a fresh token.
"""

from __future__ import annotations

import datetime as dt

import pytest

from attest_verdicts import AMD_CRLS, AZURE_AS_OF
from azure_fixtures import V2, V2_REPORT_DATA, maa_token, worker_reference
from veil.attest import api
from veil.attest.api import Binding, VerifyOptions
from veil.attest.sim.maa import SimMaa
from veil.attest.trust import TrustRoots
from veil.errors import VeilError

BEFORE = AZURE_AS_OF - dt.timedelta(days=1)


@pytest.fixture(scope="module")
def maa() -> SimMaa:
    return SimMaa(issuer="https://sharedeus2.eus2.attest.azure.net", not_before=BEFORE)


def _appraise(token: dict, pinned: str, as_of: dt.datetime = AZURE_AS_OF) -> str:  # type: ignore[type-arg]
    evidence = {"platform": "azure-snp-vtpm", "vtpm": V2, "maa": token}
    options = VerifyOptions(Binding.to(V2_REPORT_DATA), TrustRoots.production(), as_of, AMD_CRLS)
    try:
        api.appraise(evidence, [worker_reference(None, [pinned])], options)
    except VeilError as err:
        return err.reason
    return "ok"


def test_control_pinned_signer_fresh_token(maa: SimMaa) -> None:
    assert _appraise(maa_token(maa, now=AZURE_AS_OF), maa.root_fingerprint) == "ok"


def test_token_from_the_hosts_own_signer_refused(maa: SimMaa) -> None:
    own = SimMaa(issuer=maa.issuer, not_before=BEFORE)  # same issuer name, the host's own keys
    assert _appraise(maa_token(own, now=AZURE_AS_OF), maa.root_fingerprint) == "azure.maa_untrusted_root"


def test_expired_token_refused(maa: SimMaa) -> None:
    old = maa_token(maa, now=AZURE_AS_OF - dt.timedelta(hours=9))  # tokens live 8 hours
    assert _appraise(old, maa.root_fingerprint) == "azure.maa_token_expired"


def test_token_for_other_runtime_claims_refused(maa: SimMaa) -> None:
    other = maa_token(maa, now=AZURE_AS_OF, runtime={"user-data": "11" * 64})
    assert _appraise(other, maa.root_fingerprint) == "azure.maa_binding_mismatch"
