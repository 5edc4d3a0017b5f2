"""Real coordinator processes for the coordinator attack tests: `veil coordinator` started the way a
deployment starts it (the bootstrap admin key in the simulated HOST_DATA, state sealed in SQLite),
plus the admin's side of a deployment (manifest naming the attested state, a data key uploaded)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from deployment_fixtures import make_manifest
from veil import admin, keyrelease
from veil.attest.attester import SimSnpAttester
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.manifest import Manifest, ModelEntry, ReleasePolicy, SignedManifest, public_key_hex, sign_manifest
from veil.testing import free_port

DATA_KEY_ID = "model-key"


@dataclass
class CoordinatorProcess:
    """One `veil coordinator` process; ``args`` are extra command-line flags."""

    workdir: Path
    sim_dir: Path
    launch_key: Ed25519PrivateKey | None
    db: Path | None = None
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"coordinator-{self.port}.log"

    def start(self) -> "CoordinatorProcess":
        cmd = [sys.executable, "-m", "veil", "coordinator", "--port", str(self.port), "--sim-dir", str(self.sim_dir), *self.args]
        if self.db is not None:
            cmd += ["--db", f"sqlite:///{self.db}"]
        if self.launch_key is not None:
            cmd += ["--sim-launch-data", public_key_hex(self.launch_key)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"coordinator exited: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("coordinator did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "CoordinatorProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def attestation(self) -> dict:
        return httpx.get(f"{self.url}/v1/attestation", params={"nonce": os.urandom(32).hex()}, timeout=30).json()


@dataclass
class Deployment:
    """The admin's view of a genuine deployment: keys, the chip, the manifest they set."""

    workdir: Path
    sim_dir: Path
    admin: Ed25519PrivateKey
    recovery: X25519PrivateKey
    data_key: bytes
    signed: SignedManifest | None = None

    @classmethod
    def create(cls, workdir: Path) -> "Deployment":
        sim_dir = workdir / "sim"
        SimPlatform.create(sim_dir)
        return cls(workdir, sim_dir, Ed25519PrivateKey.generate(), X25519PrivateKey.generate(), os.urandom(32))

    @property
    def attester(self) -> SimSnpAttester:
        """The simulated chip as a worker launched with the bootstrap key sees it."""
        return SimSnpAttester(self.sim_dir, host_data=bytes.fromhex(public_key_hex(self.admin)))

    def coordinator(self, db: Path | None = None, args: list[str] | None = None, port: int | None = None) -> CoordinatorProcess:
        return CoordinatorProcess(self.workdir, self.sim_dir, self.admin, db, list(args or []), port or free_port())

    def manifest(self, identity: str, **kw: object) -> Manifest:
        base = make_manifest(
            self.sim_dir,
            self.admin,
            self.attester.measurement.hex(),
            coordinator_identity=identity,
            recovery_keys=[keyrelease.public_bytes(self.recovery).hex()],
            models=[ModelEntry(name="sealed-model", sha256="11" * 32, key_id=DATA_KEY_ID)],
            release_policies={DATA_KEY_ID: ReleasePolicy(allow_simulated=True)},
        )
        return base.model_copy(update=kw) if kw else base

    def policy(self, url: str) -> ClientPolicy:
        """What the admin trusts: this code's measurement, their own admin key, this simulated chip."""
        m = make_manifest(self.sim_dir, self.admin, self.attester.measurement.hex())
        return ClientPolicy(
            coordinator_url=url,
            coordinator=m.coordinator,
            admin_keys=[public_key_hex(self.admin)],
            trust_simulated=True,
            simulation_roots=m.trusted_simulation_roots,
        )

    def set_up(self, coord: CoordinatorProcess, **kw: object) -> SignedManifest:
        """Set the first manifest (naming the attested state) and upload the data key."""
        identity = coord.attestation()["identity"]
        self.signed = sign_manifest(self.manifest(identity, **kw), [self.admin], None)
        httpx.post(f"{coord.url}/v1/manifest", content=self.signed.model_dump_json(), timeout=30).raise_for_status()
        admin.put_secret(self.policy(coord.url), self.admin, DATA_KEY_ID, self.data_key)
        return self.signed

    def write_keys(self) -> tuple[Path, Path, Path]:
        """The admin's key files and a client policy, as `veil recover` and `veil audit` read them."""
        keys = self.workdir / "admin-keys"
        keys.mkdir(exist_ok=True)
        admin_path, recovery_path = keys / "admin.key", keys / "recovery.key"
        for path, key in ((admin_path, self.admin), (recovery_path, self.recovery)):
            path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        return admin_path, recovery_path, keys / "client-policy.json"


def veil_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the `veil` command line as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "veil", *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def build_host_state(db: Path, recovery_public: bytes | None = None):
    """What a host that owns the disk can build: a database under a state key of its own, holding
    its own OHTTP keys, the deployment's public manifest history (copied from the genuine database)
    and a sealed head, with the platform-sealed state key made unreadable. With ``recovery_public``
    it also seals its key to that (public) recovery key, as a recovery record. Returns its seed."""
    import json
    import sqlite3
    import time as _time

    from veil.coordinator.keys import Generation
    from veil.coordinator.seed import StateSeed
    from veil.coordinator.state import META_HEAD, META_PLATFORM_SEALED, META_RECOVERY, RECOVERY_INFO
    from veil.coordinator.store import FORMAT, Store

    with sqlite3.connect(db) as genuine:
        history = genuine.execute("select idx, digest, entry from veil_history order by idx").fetchall()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    seed = StateSeed.generate()
    store = Store.from_url(f"sqlite:///{db}")
    generation = Generation.create(0, _time.time(), set())
    with store.transaction() as conn:
        store.put_meta(conn, "format", FORMAT)
        store.put_meta(conn, META_PLATFORM_SEALED, os.urandom(60))  # the platform can no longer open it
        store.add_generation(conn, 1, seed.cipher.seal(json.dumps(generation.to_record()).encode(), "ohttp:1"))
        for idx, digest, entry in history:
            store.add_history(conn, idx, digest, entry)
        head = json.dumps({"length": len(history), "digest": history[-1][1]}).encode()
        store.put_meta(conn, META_HEAD, seed.cipher.seal(head, META_HEAD))
        if recovery_public is not None:
            record = keyrelease.seal(recovery_public, seed.secret, RECOVERY_INFO)
            store.put_meta(
                conn,
                META_RECOVERY,
                json.dumps([{"recovery_key": recovery_public.hex(), "sealed_state_key": record.hex()}]).encode(),
            )
    store.engine.dispose()
    return seed
