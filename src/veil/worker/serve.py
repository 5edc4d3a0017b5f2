"""Run a worker: attest and register, fetch the manifest it was admitted under, start the
sandboxed engine on a Unix socket, and serve the OHTTP gateway in front of it.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from veil.attest.attester import Attester
from veil.httpserver import GATEWAY_LIMITS, make_server
from veil.errors import PolicyError, VeilError, VerificationError
from veil.manifest import ModelEntry, SignedManifest, sandbox_binding
from veil.sandbox.profile import SandboxProfile
from veil import keyrelease
from veil.worker.registration import (
    RegistrationRefused,
    ReleasedSecrets,
    authenticate_coordinator,
    register,
    trust_anchor,
)

if TYPE_CHECKING:
    from veil.worker.pool import GatewayPool

log = logging.getLogger("veil.worker")
STDIN_MODEL_PATH = "/proc/self/fd/0"
# The manifest names an engine; each is a process serving HTTP on the engine's Unix socket.
ENGINE_MODULES = {
    "llama.cpp": "veil.engines.llamacpp",
    "onnxruntime": "veil.engines.onnx",
    "transformers": "veil.engines.transformers_engine",
    "vllm": "veil.engines.vllm",
}


@dataclass(frozen=True)
class WorkerConfig:
    coordinator_url: str
    host: str
    port: int
    model_path: Path | None  # plaintext weights; None when the manifest's model is sealed
    run_dir: Path  # holds the engine's Unix socket
    allow_unsandboxed: bool = False  # dev only: permits a manifest whose sandbox profile is "none"
    model_name: str | None = None  # which manifest model to serve (default: the first)
    gpu: str = "auto"  # auto: attest CC-mode GPUs through NVML when present; none; required; sim
    reregister_seconds: float = 60.0  # re-attest this often; manifest changes take effect then
    sim_gpu_dir: Path | None = None  # gpu=sim: the SIMULATED H100 of `veil up --sim-gpu`
    gateway_processes: int = 1  # gateway processes on the port (veil.worker.pool); 0: one per core


def gpu_collector(mode: str, sim_gpu_dir: Path | None = None) -> Callable[[bytes, bytes], list[Any]] | None:
    """Collect GPU evidence for registration: NVML on a confidential-computing GPU, or the
    SIMULATED H100 of a local deployment (mode "sim")."""
    from veil.attest import composite
    from veil.errors import ParseError, VeilError

    if mode == "none":
        return None
    if mode == "sim":
        from veil.attest.sim.gpu import SimGpu

        if sim_gpu_dir is None:
            raise ParseError("attest.missing_sim_dir", "--gpu sim needs the simulated GPU's directory (--sim-gpu-dir)")
        return SimGpu.load(sim_gpu_dir).collect

    def collect(challenge: bytes, public_key: bytes) -> list[Any]:
        try:
            return composite.collect_gpu_evidence(challenge, public_key)[0]
        except VeilError as err:
            if mode == "auto" and err.reason == "nvidia.no_gpu":
                return []
            raise

    return collect


def register_under_current(
    config: WorkerConfig,
    attester: Attester,
    http: httpx.Client,
    previous: ReleasedSecrets | None = None,
) -> tuple[ReleasedSecrets, SignedManifest]:
    """Register under the coordinator's current manifest, committing to its sandbox settings.

    The coordinator is authenticated first (registration.authenticate_coordinator: its history
    rooted in our launch data's bootstrap key, its identity pinned), so the manifest whose sandbox
    settings the evidence binds is a verified one; the coordinator refuses evidence that binds
    others. A manifest that changes in between (the binding no longer matches) is authenticated
    again, up to three times.
    """
    pin = previous.coordinator if previous is not None else None
    for attempt in range(3):
        if pin is None or attempt:
            pin = authenticate_coordinator(config.coordinator_url, http, trust_anchor(attester), pin)
        manifest = pin.manifest
        sandbox_profile(manifest, config)  # never commit to a profile this worker would refuse to run
        try:
            secrets = register(
                config.coordinator_url,
                attester,
                http,
                gpu_collector(config.gpu, config.sim_gpu_dir),
                previous,
                sandbox=sandbox_binding(manifest.manifest.sandbox),
                pin=pin,
            )
        except RegistrationRefused as err:
            if err.reason != "binding.report_data_mismatch":
                raise  # a verdict on this worker's evidence
            continue  # the manifest moved under us: read (and verify) it again
        return secrets, secrets.manifest
    raise VerificationError("manifest.digest_mismatch", "the coordinator's manifest kept changing during registration")


def select_model(manifest: SignedManifest, name: str | None) -> ModelEntry:
    models = manifest.manifest.models
    for entry in models:
        if name is None or entry.name == name:
            return entry
    raise PolicyError("model.not_in_manifest", f"model {name!r} is not in the manifest")


@dataclass
class Weights:
    """Where the engine finds the weights: a plain file, or a sealed memfd it inherits.

    A memfd becomes the engine's stdin and is opened as /proc/self/fd/0: stdio is the one
    descriptor set that every sandbox profile passes through (gVisor's runsc passes no others).
    """

    path: str
    stdin_fd: int | None = None
    memfile: object | None = None

    def close(self) -> None:
        if self.memfile is not None:
            self.memfile.close()  # type: ignore[attr-defined]


def load_weights(entry: ModelEntry, secrets: ReleasedSecrets, config: WorkerConfig) -> Weights:
    """Sealed weights are unsealed into a memfd (never onto disk); plain ones must match the pin."""
    if entry.source is not None:
        from veil.sealing import unseal_to_memfd

        key_hex = secrets.data_keys.get(entry.key_id or "")
        if key_hex is None:
            raise PolicyError("secret.not_released", f"the coordinator did not release key {entry.key_id!r} to this worker")
        if entry.tree_sha256 is None:
            raise PolicyError("seal.unpinned", f"the manifest pins no tree_sha256 for the sealed model {entry.name!r}")
        memfile = unseal_to_memfd(entry.source, bytes.fromhex(key_hex), expected_tree_digest=entry.tree_sha256)
        os.lseek(memfile.fd, 0, os.SEEK_SET)  # gVisor shares the offset with the engine's stdin
        return Weights(STDIN_MODEL_PATH, memfile.fd, memfile)
    from veil.engines.models import sha256_file

    if config.model_path is None:
        raise PolicyError("model.missing", f"model {entry.name!r} is not sealed and no --model was given")
    digest = sha256_file(config.model_path)
    if digest != entry.sha256:
        raise PolicyError(
            "model.digest_mismatch", f"{config.model_path.name} (sha256 {digest[:16]}…) is not the manifest's {entry.name}"
        )
    return Weights(str(config.model_path))


def sandbox_profile(manifest: SignedManifest, config: WorkerConfig) -> SandboxProfile:
    """The profile that enforces the manifest's sandbox settings, or a refusal.

    There is no fallback: a profile this machine cannot enforce stops the worker when the engine
    starts (``sandbox.unavailable``), and "none" needs the worker's explicit development flag.
    """
    settings = manifest.manifest.sandbox
    if settings.profile == "none" and not config.allow_unsandboxed:
        raise PolicyError(
            "sandbox.unsandboxed_refused",
            "the manifest asks for no sandbox; start the worker with --allow-unsandboxed (development only)",
        )
    return SandboxProfile(name=settings.profile, allow_gpu=settings.allow_gpu, dev_unsandboxed=settings.profile == "none")


def gateway_process_count(requested: int, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """How many gateway processes to run: ``requested``, or for 0 one per core this process may
    use: its CPU affinity, capped by its cgroup's CPU quota (a Kubernetes pod's CPU limit leaves
    the affinity at every core of the node)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup's CFS quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        p = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def run_worker(config: WorkerConfig, attester: Attester) -> None:
    from veil.engines.launcher import EngineProcess
    from veil.sandbox.hardening import harden_worker
    from veil.worker.pool import GatewayPool, GatewaySpec, build_app, reuseport_socket
    from veil.worker.replay import DEFAULT_CAPACITY
    from veil.worker.shared_state import SharedState

    if problem := harden_worker():  # no core dumps; the engine's mounts die with this process
        log.warning("worker keeps the host's mount namespace: %s", problem)

    with httpx.Client(timeout=30) as http:
        secrets, manifest = register_under_current(config, attester, http)
    entry = select_model(manifest, config.model_name)
    keyrelease.import_ohttp_keys(secrets.ohttp_keys)  # malformed records refuse the worker before the engine starts
    config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(config.run_dir, 0o700)  # an existing directory is tightened too: only we reach the socket
    weights = load_weights(entry, secrets, config)
    profile = sandbox_profile(manifest, config)
    log.warning(
        "worker %s admitted; starting engine for %s (sandbox: %s)",
        secrets.worker_id,
        entry.name,
        manifest.manifest.sandbox.profile,
    )
    engine = EngineProcess(
        config.run_dir / "engine.sock",
        weights.path,
        sandbox=profile,
        model_id=entry.name,
        engine_module=ENGINE_MODULES[entry.engine],
        stdin_fd=weights.stdin_fd,
    )
    with engine:
        # Tenants and padding from the attested manifest; the cache-salt secret is made fresh per
        # worker and shared by its gateway processes, as are the replay cache and tenant buckets.
        spec = GatewaySpec(
            host=config.host,
            port=config.port,
            engine_socket=str(engine.socket_path),
            key_records=secrets.ohttp_keys,
            salt_secret=os.urandom(32),
            limits=GATEWAY_LIMITS,
            manifest=manifest.manifest,
            engine=entry.engine,
        )
        shared = SharedState.create(DEFAULT_CAPACITY)
        app = build_app(spec, shared)
        # Slow clients timed out, connections capped with descriptors kept for the engine and
        # coordinator links (veil.httpserver).
        server = make_server(app, host=config.host, port=config.port, limits=GATEWAY_LIMITS)
        try:
            listener = reuseport_socket(config.host, config.port, first=True)
        except OSError as exc:
            raise VeilError("worker.port_unavailable", f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from None
        pool = GatewayPool(gateway_process_count(config.gateway_processes), spec, shared.fd)
        keeper = Reregistration(config, attester, app, server, secrets, entry, engine, weights, pool)
        keeper.start()
        try:
            server.run(sockets=[listener])
        finally:
            keeper.stop()
            pool.close()
            weights.close()
        if keeper.refused is not None:
            raise keeper.refused


# Refusals that say something about the coordinator (busy, locked, rate-limited, a race), not about
# this worker: they count as failed re-attestations, like an unreachable coordinator.
NOT_A_VERDICT = frozenset(
    {
        "state.locked",
        "nonce.unknown",
        "nonce.expired",
        "nonce.too_many_outstanding",
        "manifest.digest_mismatch",
        "registration.malformed",
    }
)
MAX_REATTEST_FAILURES = 3  # consecutive; with the default 60 s interval, 3 minutes without fresh attestation


def _is_verdict(err: BaseException) -> bool:
    """A refusal of this worker itself (its evidence, the model it serves, a sandbox it cannot
    enforce): stop at once."""
    from veil.engines.launcher import EngineStartError
    from veil.sandbox.profile import SandboxError

    if isinstance(err, (SandboxError, EngineStartError)):
        return True
    if not isinstance(err, (RegistrationRefused, PolicyError, VerificationError)):
        return False
    reason = err.reason
    return not (reason in NOT_A_VERDICT or reason.startswith(("http.", "state.", "nonce.")) or "rate_limit" in reason)


class Reregistration:
    """Re-attest on an interval, so the coordinator keeps seeing fresh evidence and a newer manifest
    (tenants, padding, gateway settings, keys) reaches this worker without a restart.

    Fail closed, and never switched off: the loop survives any exception. A verdict on this worker
    (its evidence refused — say the manifest no longer admits it — or the model it serves changed)
    stops it at once; any other failure (the coordinator unreachable, locked or busy, a malformed
    answer, an exhausted descriptor table) counts, and after ``MAX_REATTEST_FAILURES`` consecutive
    ones the worker stops too. Stopping means the gateway forgets every key at once (requests get
    ``gateway.stopped``) and the server exits with the reason. The keys each re-registration
    brings replace the old set, so keys the coordinator rotated out stop working here.

    A manifest that changes the sandbox is treated like one that changes the model would be if it
    could be done live: this worker commits to the new settings in its evidence (see
    :func:`register_under_current`), then restarts the engine under the new profile, and only then
    applies the manifest (its tenants and keys); if the engine cannot start under it, the worker
    stops. No engine ever runs under a profile the worker's latest evidence does not bind.
    """

    def __init__(
        self,
        config: WorkerConfig,
        attester: Attester,
        app: Any,
        server: uvicorn.Server,
        secrets: ReleasedSecrets,
        entry: ModelEntry,
        engine: Any = None,
        weights: Weights | None = None,
        pool: GatewayPool | None = None,
    ) -> None:
        self.config, self.attester, self.app, self.server = config, attester, app, server
        self.secrets, self.digest, self.entry = secrets, secrets.manifest_digest, entry
        self.engine, self.weights = engine, weights
        self.pool = pool  # the worker's other gateway processes: told everything the app is told
        self.refused: VeilError | None = None
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="veil-reregister", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while self.refused is None and not self._stop.wait(self.config.reregister_seconds):
            self.tick()

    def tick(self) -> None:
        """One re-attestation; whatever goes wrong is counted or stops the worker, never raised."""
        try:
            self.once()
        except Exception as err:  # noqa: BLE001 - the loop must survive anything
            if _is_verdict(err):
                self._refuse(err)  # type: ignore[arg-type]
                return
            self.failures += 1
            reason = getattr(err, "reason", type(err).__name__)
            log.warning("re-attestation failed (%d of %d in a row): %s", self.failures, MAX_REATTEST_FAILURES, reason)
            if self.failures >= MAX_REATTEST_FAILURES:
                self._refuse(
                    VeilError(
                        "worker.reattestation_failed",
                        f"{self.failures} re-attestations in a row failed (last: {reason}); this worker stops serving",
                    )
                )
        else:
            self.failures = 0

    def once(self) -> None:
        with httpx.Client(timeout=30) as http:
            secrets, manifest = register_under_current(self.config, self.attester, http, self.secrets)
        keys = keyrelease.import_ohttp_keys(secrets.ohttp_keys)
        gateway = self.app.state.gateway
        self.secrets = secrets
        if secrets.manifest_digest == self.digest:
            gateway.keys = keys  # the coordinator may rotate keys without a new manifest
            if self.pool is not None:
                self.pool.keys(secrets.ohttp_keys)
            return
        if select_model(manifest, self.entry.name) != self.entry:
            raise PolicyError("model.changed", "the manifest changed the model this worker serves; restart it")
        profile = sandbox_profile(manifest, self.config)
        if self.engine is not None and profile != self.engine.profile:
            self._restart_engine(profile)
        gateway.apply_manifest(manifest.manifest, keys)
        if self.pool is not None:
            self.pool.manifest(manifest.manifest, secrets.ohttp_keys)
        self.digest = secrets.manifest_digest
        log.warning("worker %s now serves under manifest %s", secrets.worker_id, self.digest[:16])

    def _restart_engine(self, profile: SandboxProfile) -> None:
        """Stop the engine and start it confined by ``profile``; raises (a verdict) if it cannot."""
        log.warning("the manifest changed the sandbox: restarting the engine under %s", profile.describe())
        if self.weights is not None and self.weights.stdin_fd is not None:
            os.lseek(self.weights.stdin_fd, 0, os.SEEK_SET)  # the engine reads its weights from the start again
        self.engine.restart(profile)
        log.warning("engine restarted under %s", profile.name)

    def _refuse(self, err: VeilError) -> None:
        log.error("stopping: %s (%s)", err.message, err.reason)
        self.refused = err
        self.app.state.gateway.stop(err.reason)  # no key left: nothing more can be decrypted here
        if self.pool is not None:
            self.pool.stop(err.reason)
        self.server.should_exit = True
