"""`veil up`: a whole deployment on one machine, on the simulated TEE.

Coordinator and worker run as separate processes, exactly as they would in two confidential VMs;
the only difference from production is the attester (``sim-snp``, ``sim-tdx``, ``sim-azure-snp`` or
``sim-azure-tdx``, labelled everywhere). This module prepares the state directory (simulated chip,
admin key), starts the processes, sets a manifest made for this deployment and writes the client
policy that trusts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil import admin as admin_ops
from veil import keyrelease, wire
from veil.client.policy import POLICY_FILE, ClientPolicy
from veil.errors import VeilError
from veil.manifest import (
    AZURE_PLATFORMS,
    GatewaySettings,
    Manifest,
    ModelEntry,
    ReferenceValues,
    ReleasePolicy,
    SandboxSettings,
    SignedManifest,
    public_key_hex,
    sign_manifest,
)
from veil.balancer import HAProxy
from veil.localscale import Topology
from veil.process import die_with_parent

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DATA_KEY_ID = f"{DEFAULT_MODEL_NAME}-key"


@dataclass(frozen=True)
class SealedModel:
    plaintext_sha256: str
    tree_sha256: str
    sealed_sha256: str
    key: bytes = field(repr=False)


class DeploymentError(VeilError):
    """A local deployment could not be started."""


def _terminate_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the process that started it dies."""
    die_with_parent(signal.SIGTERM)


@dataclass
class LocalDeployment:
    state_dir: Path
    host: str = "127.0.0.1"
    coordinator_port: int = 8470
    worker_port: int = 8471
    sandbox: str = "bubblewrap"
    model_path: Path | None = None
    # Replicas (veil.localscale): more than one of either puts HAProxy on the public ports.
    workers: int = 1
    coordinators: int = 1
    db_url: str | None = None  # default: SQLite in the state directory; several coordinators need PostgreSQL
    reregister_seconds: float = 60.0  # how often workers re-attest (and pick up a newer manifest)
    gateway_processes: int = 1  # gateway processes per worker on its port (0: one per core)
    sim_gpu: bool = False  # every worker has a SIMULATED H100 whose evidence the manifest requires
    platform: str = "sim-snp"  # the simulated TEE both processes run on: sim-snp, sim-tdx, sim-azure-snp|tdx
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _launch_data: list[str] = field(default_factory=list, repr=False)  # --sim-launch-data for every VM
    topology: Topology = field(init=False)
    balancer: HAProxy | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.topology = Topology(self.host, self.coordinator_port, self.worker_port, self.workers, self.coordinators)
        if self.coordinators > 1 and not (self.db_url or "").startswith("postgresql"):
            raise DeploymentError(
                "deploy.ha_needs_postgres",
                "several coordinators share their sealed state through PostgreSQL: pass --db postgresql+psycopg://...",
            )

    @property
    def coordinator_url(self) -> str:
        return f"http://{self.host}:{self.coordinator_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.worker_port}"

    @property
    def sim_dir(self) -> Path:
        return self.state_dir / ("sim-platform" if self.platform == "sim-snp" else f"{self.platform}-platform")

    @property
    def policy_path(self) -> Path:
        return self.state_dir / POLICY_FILE

    def prepare(self) -> None:
        from veil.attest import sim
        from veil.engines.models import default_model_path

        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        sim.load_or_create(self.platform, self.sim_dir)
        self.model_path = self.model_path or default_model_path()
        if self.sim_gpu:
            from veil.attest.sim.gpu import SimGpu

            SimGpu.load_or_create(self.sim_gpu_dir)

    @property
    def sim_gpu_dir(self) -> Path:
        return self.state_dir / "sim-gpu"

    def _with_gpu(self, manifest: Manifest) -> Manifest:
        """With --sim-gpu: workers must present the simulated H100, judged by its pinned RIMs, and
        the model key goes only to a worker whose GPU verified."""
        if not self.sim_gpu:
            return manifest
        from veil.attest.sim.gpu import SimGpu
        from veil.manifest import GpuReference

        gpu = SimGpu.load(self.sim_gpu_dir)
        reference = GpuReference(allowed_platforms=["nvidia-h100"], allowed_rim_digests=gpu.rim_digests())
        policies = {
            k: p.model_copy(update={"require_gpu": True, "gpu_platforms": ["nvidia-h100"]})
            for k, p in manifest.release_policies.items()
        }
        return manifest.model_copy(
            update={
                "workers": [r.model_copy(update={"require_gpu": True, "gpu": reference}) for r in manifest.workers],
                "release_policies": policies,
                "trusted_simulation_roots": [*manifest.trusted_simulation_roots, *gpu.simulation_roots],
            }
        )

    def _gpu_args(self) -> list[str]:
        return ["--gpu", "sim", "--sim-gpu-dir", str(self.sim_gpu_dir)] if self.sim_gpu else []

    @property
    def sealed_path(self) -> Path:
        return self.state_dir / "models" / f"{DEFAULT_MODEL_NAME}.sealed"

    @property
    def data_key_path(self) -> Path:
        return self.state_dir / "models" / f"{DEFAULT_MODEL_NAME}.key"

    def seal_model(self) -> SealedModel:
        """Seal the weights once under a fresh data key (the admin keeps the key file, 0600)."""
        from veil.engines.models import sha256_file
        from veil.errors import ParseError
        from veil.sealing import plaintext_digests, read_header, seal_file

        assert self.model_path is not None
        _, plain, tree = plaintext_digests(self.model_path)
        try:  # a file sealed by an older format version is sealed afresh
            current = self.sealed_path.exists() and read_header(self.sealed_path).tree_sha256 == tree.hex()
        except ParseError:
            current = False
        if current and self.data_key_path.exists():
            key = admin_ops.load_data_key(self.data_key_path)
        else:
            self.sealed_path.parent.mkdir(mode=0o700, exist_ok=True)
            self.data_key_path.unlink(missing_ok=True)
            key = admin_ops.write_new_data_key(self.data_key_path)
            seal_file(self.model_path, self.sealed_path, key, DATA_KEY_ID)
        return SealedModel(plain.hex(), tree.hex(), sha256_file(self.sealed_path), key)

    def start(self, progress: Callable[[str], None] | None = None) -> ClientPolicy:
        """Start everything; returns the client policy written for this deployment."""
        step = progress or (lambda msg: None)
        step("preparing the simulated TEE and admin key")
        self.prepare()
        admin = admin_ops.load_or_create_admin_key(self.state_dir / "admin.key")
        # The simulated VMM launches coordinators and workers with the admin key in HOST_DATA: only it
        # can set the first manifest, and workers trust only a history rooted in it.
        self._launch_data = ["--sim-launch-data", public_key_hex(admin)]
        self._start_coordinators(step)
        if self.topology.balanced:
            step(f"starting HAProxy ({self.workers} worker(s), {self.coordinators} coordinator(s) behind it)")
            self._start_balancer()
        step("sealing the model weights under a data key")
        sealed = self.seal_model()
        recovery = admin_ops.load_or_create_recovery_key(self.state_dir / "recovery.key")
        draft = self.manifest(admin, recovery, sealed)
        self._unlock_if_needed(admin, recovery, draft)
        manifest = draft.model_copy(update={"coordinator_identity": self._identity(admin, draft)})
        step("signing and setting the manifest")
        signed = self._set_manifest(admin, manifest)
        self._upload_data_key(admin, manifest, signed, sealed.key)
        self._start_workers(step)
        policy = self._policy(manifest, [signed.digest.hex()], [public_key_hex(admin)])
        policy.save(self.policy_path)
        step(f"client policy written to {self.policy_path}")
        return policy

    def _unlock_if_needed(self, admin: Ed25519PrivateKey, recovery: X25519PrivateKey, manifest: Manifest) -> None:
        """After a code change the coordinator's sealing key changes and it comes up locked:
        restore it with this deployment's recovery and admin keys, as `veil recover` would."""
        target = self._policy(manifest, [], [public_key_hex(admin)])
        for url in self.topology.coordinator_urls:  # each replica holds its own unlocked copy
            body = httpx.get(f"{url}{wire.ATTESTATION_PATH}", params={"nonce": "00" * 32}, timeout=10).json()
            if body.get("locked"):
                admin_ops.recover(url, recovery, admin, target.model_copy(update={"coordinator_url": url}))

    def _identity(self, admin: Ed25519PrivateKey, manifest: Manifest) -> str:
        """The verified coordinator's state identity, which the manifest must name."""
        from veil.client.verify import verify_coordinator

        policy = self._policy(manifest, [], [public_key_hex(admin)])
        return verify_coordinator(policy, require_manifest=False).identity.hex()

    def _upload_data_key(self, admin: Ed25519PrivateKey, manifest: Manifest, signed: SignedManifest, key: bytes) -> None:
        """The data key goes to the coordinator only sealed to its freshly verified key."""
        policy = self._policy(manifest, [signed.digest.hex()], [])
        if DATA_KEY_ID not in admin_ops.list_secrets(policy, admin):
            admin_ops.put_secret(policy, admin, DATA_KEY_ID, key)

    def _set_manifest(self, admin: Ed25519PrivateKey, manifest: Manifest) -> SignedManifest:
        with httpx.Client(timeout=10) as http:
            current = http.get(f"{self.coordinator_url}{wire.MANIFEST_PATH}")
            previous = SignedManifest.parse(current.content) if current.status_code == 200 else None
            if previous is not None and previous.manifest == manifest:
                return previous  # unchanged deployment: keep the head as it is
            signed = sign_manifest(manifest, [admin], previous.digest.hex() if previous else None)
            admin_ops.publish_manifest(self.coordinator_url, signed, http=http)
            return signed

    def _policy(self, manifest: Manifest, digests: list[str], admin_keys: list[str]) -> ClientPolicy:
        return ClientPolicy.local_development(
            coordinator_url=self.coordinator_url,
            gateway_url=self.gateway_url,
            coordinator=manifest.coordinator,
            manifest_digests=digests,
            admin_keys=admin_keys,
            simulation_roots=manifest.trusted_simulation_roots,
            sandbox_profile=manifest.sandbox.profile,
        )

    def manifest(self, admin: Ed25519PrivateKey, recovery: X25519PrivateKey, sealed: SealedModel) -> Manifest:
        from veil.attest import sim

        measurement = sim.measure_code().hex()
        refs = [ReferenceValues(platform=self.platform, measurements=[measurement])]  # type: ignore[arg-type]
        # A local demo: the simulated worker running exactly this code may receive the key.
        release = ReleasePolicy(platforms=[self.platform], measurements=[measurement], allow_simulated=True)  # type: ignore[list-item]
        if self.platform in AZURE_PLATFORMS:  # an MAA token is required, and the key goes by an SKR policy
            from veil.attest.sim.azure import sim_reference, sim_release_policy

            refs, release = [sim_reference(self.platform, measurement)], sim_release_policy(self.platform, measurement)
        return self._with_gpu(
            Manifest(
                coordinator=refs,
                workers=refs,
                models=[
                    ModelEntry(
                        name=DEFAULT_MODEL_NAME,
                        sha256=sealed.plaintext_sha256,
                        source=str(self.sealed_path),
                        sealed_sha256=sealed.sealed_sha256,
                        tree_sha256=sealed.tree_sha256,
                        key_id=DATA_KEY_ID,
                    )
                ],
                release_policies={DATA_KEY_ID: release},
                sandbox=SandboxSettings(profile=self.sandbox),  # type: ignore[arg-type]
                admin_keys=[public_key_hex(admin)],
                trusted_simulation_roots=sim.load_or_create(self.platform, self.sim_dir).simulation_roots,
                recovery_keys=[keyrelease.public_bytes(recovery).hex()],
                # A local demo also serves ohttpy's variant (/score), so standard clients can try it;
                # clients see it in the manifest (its answers show their status to relays).
                gateway=GatewaySettings(ohttpy_compat=True),
            )
        )

    # replicas -----------------------------------------------------------------------------------
    def _start_coordinators(self, step) -> None:  # type: ignore[no-untyped-def]
        db = self.db_url or f"sqlite:///{self.state_dir / 'coordinator.db'}"
        # Behind HAProxy every client and worker reaches a coordinator from the balancer's address,
        # so per-source limits would hold them all to one source's share: they are the balancer's
        # to enforce per client there (docs/operations.md), and the coordinators' are opened up.
        limits = (
            [
                "--attestations-per-second",
                "1000",
                "--attestation-burst",
                "2000",
                "--challenges-per-second",
                "500",
                "--challenge-burst",
                "1000",
            ]
            if self.topology.balanced
            else []
        )
        for i, port in enumerate(self.topology.coordinator_ports):
            name = self._replica_name("coordinator", i, self.coordinators)
            step(f"starting the {name}")
            # the database URL goes through the environment: a password never shows in argv
            self._spawn(
                name,
                [
                    "coordinator",
                    "--host",
                    self.host,
                    "--port",
                    str(port),
                    "--platform",
                    self.platform,
                    "--sim-dir",
                    str(self.sim_dir),
                    *self._launch_data,
                    *limits,
                ],
                env={"VEIL_DB": db},
            )
        for i, url in enumerate(self.topology.coordinator_urls):
            name = self._replica_name("coordinator", i, self.coordinators)
            self._wait_http(f"{url}{wire.HEALTH_PATH}", name, 30, self.processes[i])

    def _start_balancer(self) -> None:
        self.balancer, binds = self.topology.balancer(self.state_dir / "haproxy")
        self.balancer.start(binds)
        if self.coordinators > 1:
            self.balancer.wait_servers_up("coordinators", 60)
        assert self.balancer.proc is not None
        self.processes.append(self.balancer.proc)  # stopped after the workers, before the coordinators

    def _start_workers(self, step) -> None:  # type: ignore[no-untyped-def]
        first = len(self.processes)
        for i, port in enumerate(self.topology.worker_ports):
            name = self._replica_name("worker", i, self.workers)
            step(f"starting the {name} (attest, register, start the sandboxed engine)")
            run_dir = self.state_dir / "run" if self.workers == 1 else self.state_dir / "run" / name
            self._spawn(
                name,
                [
                    "worker",
                    "--coordinator",
                    self.coordinator_url,
                    "--host",
                    self.host,
                    "--port",
                    str(port),
                    "--platform",
                    self.platform,
                    "--sim-dir",
                    str(self.sim_dir),
                    "--run-dir",
                    str(run_dir),
                    "--reregister-seconds",
                    str(self.reregister_seconds),
                    "--gateway-processes",
                    str(self.gateway_processes),
                    *self._launch_data,
                    *(["--allow-unsandboxed"] if self.sandbox == "none" else []),
                    *self._gpu_args(),
                ],
            )
        for i, port in enumerate(self.topology.worker_ports):
            name = self._replica_name("worker", i, self.workers)
            self._wait_http(f"{self.topology.url(port)}{wire.GATEWAY_PATH}", name, 120 * self.workers, self.processes[first + i])
        if self.balancer is not None and self.workers > 1:  # ready once the health checks route to every worker
            self.balancer.wait_servers_up("gateways", 60)

    @staticmethod
    def _replica_name(role: str, index: int, count: int) -> str:
        return role if count == 1 else f"{role}-{index + 1}"

    def serving(self) -> bool:
        """Whether the deployment still serves: every process, or with replicas at least one of each
        role and the balancer (a killed worker is the balancer's to route around)."""
        if not self.topology.balanced:
            return all(p.poll() is None for p in self.processes)
        alive = [p for p in self.processes if p.poll() is None]
        balancer_up = self.balancer is not None and self.balancer.proc in alive
        return balancer_up and len([p for p in alive if p is not (self.balancer.proc if self.balancer else None)]) >= 2

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.state_dir / "logs" / f"{name}.log", "ab")
        # Own session: a terminal's Ctrl-C reaches only `veil up`, which stops workers before the
        # coordinator. Parent-death signal: if `veil up` is killed outright, they go too.
        proc = subprocess.Popen(
            [sys.executable, "-m", "veil", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
            env={**os.environ, **(env or {})},
        )
        log.close()
        self.processes.append(proc)

    def _wait_http(self, url: str, name: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        proc = proc or self.processes[-1]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = self.state_dir / "logs" / f"{name}.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                if "state.unsupported_format" in tail:  # written by an older Veil: the user's choice, never ours
                    tail += f"\n(this local deployment's state in {self.state_dir} was written by another Veil version: "
                    tail += "remove that directory or pass another --state-dir to start afresh)"
                raise DeploymentError(f"deploy.{name}_exited", f"the {name} exited:\n{tail}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise DeploymentError(f"deploy.{name}_timeout", f"the {name} did not come up within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop workers before the coordinator; SIGTERM, then SIGKILL after a grace period."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.processes.clear()

    def __enter__(self) -> "LocalDeployment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
