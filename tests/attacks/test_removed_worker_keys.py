"""Attack: a worker the manifest no longer admits keeps decrypting new traffic (issue 9.6).

The attacker controls a worker that was admitted once (here: code with another measurement, which
the admins then drop from the manifest) and keeps the OHTTP keys it received. Previously there was
one key, id 1, forever. Contained: the manifest change starts a new key generation, released to the
workers the manifest admits first; the removed worker is refused at its next re-registration
(``snp.measurement_mismatch``) and never receives it; after the promotion delay clients encrypt to
the new key, and the generation the worker holds is dropped everywhere once its
grace period ends (the timing of that is tested with a clock in tests/test_coordinator_keys.py).
"""

from __future__ import annotations

import base64
import time

import httpx

from attacks.coordproc import Deployment
from veil import admin
from veil.attest.sim import SimPlatform
from veil.ohttp.keyconfig import decode_key_config_list
from veil.worker.registration import RegistrationRefused, register

OTHER_CODE = b"\x42" * 48


class OtherCode:
    """A worker running other code on the same (simulated) chip, launched for the same admins."""

    platform = "sim-snp"

    def __init__(self, dep: Deployment) -> None:
        self._sim, self._launch = SimPlatform.load(dep.sim_dir), dep.attester.launch_data()

    def evidence(self, report_data: bytes) -> dict:
        report = self._sim.attest(report_data, measurement=OTHER_CODE, host_data=self._launch)
        return {"platform": self.platform, "snp": report.to_json()}

    def launch_data(self) -> bytes:
        return self._launch

    def sealing_key(self) -> bytes:
        return b"\0" * 32


def _attested_key_ids(coord) -> list[int]:
    return [c.key_id for c in decode_key_config_list(base64.b64decode(coord.attestation()["key_configs"]))]


def test_removed_worker_gets_no_new_keys(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    with dep.coordinator(args=["--key-promotion-seconds", "3"]) as coord:
        identity = coord.attestation()["identity"]
        both = dep.manifest(identity)
        both = both.model_copy(
            update={
                "workers": [
                    both.workers[0].model_copy(update={"measurements": [*both.workers[0].measurements, OTHER_CODE.hex()]})
                ]
            }
        )
        dep.set_up(coord, workers=both.workers)
        with httpx.Client(timeout=30) as http:
            removed = register(coord.url, OtherCode(dep), http)
            held = {int(k["key_id"]) for k in removed.ohttp_keys}
            assert held == set(_attested_key_ids(coord))

            admin.set_manifest(dep.policy(coord.url), dep.admin, dep.manifest(identity))  # OTHER_CODE dropped
            try:
                register(coord.url, OtherCode(dep), http, previous=removed)
                raise AssertionError("the removed worker was admitted again")
            except RegistrationRefused as err:
                assert err.reason == "snp.measurement_mismatch"
            kept = register(coord.url, dep.attester, http)  # an admitted worker gets the pending generation
            new = {int(k["key_id"]) for k in kept.ohttp_keys} - held
            assert new, "the manifest change started no new key generation"
            deadline = time.monotonic() + 90
            while _attested_key_ids(coord)[0] in held and time.monotonic() < deadline:
                time.sleep(0.5)
            current = _attested_key_ids(coord)[0]
            assert current in new  # clients now encrypt to a key the removed worker never received
            assert set(_attested_key_ids(coord)) == held | new  # the old one in its grace
