"""Several gateway processes on one port, so that the gateway uses every core it is given.

The worker's own process serves as gateway 0 (it also re-attests); :class:`GatewayPool` starts
``processes - 1`` more (``python -m veil.worker.pool``). Each binds the worker's port with
``SO_REUSEPORT``, so the kernel spreads connections over them, and runs the same app under
uvicorn with the same server limits. What must hold across processes does:

* **Keys and settings** reach every process from the worker, never through disk, argv or the
  environment: a socketpair to each child carries JSON lines — the first with the key records,
  the manifest and the tenant salt secret, later ones with each re-registration's keys and
  manifest, or the order to stop. The worker sends them the moment it applies them itself, so
  a rotation or revocation reaches every process within the same re-attestation interval.
* **Replays** are refused whichever process a copy reaches, and **tenant limits** are drawn from
  one set of buckets: both live in the worker's :class:`~veil.worker.shared_state.SharedState`
  (an anonymous memfd each child inherits; see there for the lock).
* **Lifetime**: a child dies with the worker (parent-death signal), and stops serving (forgets
  its keys) the moment its channel closes. A child that dies on its own (a crash, the OOM killer)
  is replaced within :attr:`GatewayPool.CHECK_SECONDS`, from the keys and manifest the worker holds
  *now* — never the ones it started with, so a rotated-out key does not come back with it — up to
  :attr:`GatewayPool.MAX_RESTARTS` times a :attr:`GatewayPool.RESTART_WINDOW_SECONDS`; past that
  the worker stops replacing (a child that dies at once would only spin) and the others serve on.
  After a stop nothing is replaced.

``SO_REUSEPORT`` lets any process of the same user bind the port too; inside the TEE only Veil
runs, and the network is the host's anyway (OHTTP is end to end).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import uvicorn

from veil.httpserver import ServerLimits, make_server
from veil.manifest import GatewaySettings, Manifest, PaddingSettings
from veil.process import die_with_parent

if TYPE_CHECKING:
    from veil.worker.gateway import GatewayApp
    from veil.worker.shared_state import SharedState

log = logging.getLogger("veil.worker.pool")


def reuseport_socket(host: str, port: int, *, first: bool = False) -> socket.socket:
    """A listening TCP socket on ``host:port`` that the worker's other gateway processes bind too.

    ``first`` (the worker's own process): the port must be free, as for any server — a plain
    bind is tried first, so a worker never silently joins the sockets another server (an earlier
    deployment, say) holds on that port with ``SO_REUSEPORT``; that is ``EADDRINUSE``, as before.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if first:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            probe.bind((host, port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


@dataclasses.dataclass
class GatewaySpec:
    """What every gateway process builds its app from (the arguments of ``create_gateway_app``)."""

    host: str
    port: int
    engine_socket: str
    key_records: list[dict[str, object]] = dataclasses.field(repr=False)  # private keys: in memory only
    salt_secret: bytes = dataclasses.field(repr=False)
    limits: ServerLimits
    manifest: Manifest | None = None
    engine: str | None = None
    padding: PaddingSettings | None = None
    settings: GatewaySettings | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "engine_socket": self.engine_socket,
            "keys": self.key_records,
            "salt": self.salt_secret.hex(),
            "limits": dataclasses.asdict(self.limits),
            "manifest": self.manifest.model_dump_json() if self.manifest is not None else None,
            "engine": self.engine,
            "padding": self.padding.model_dump_json() if self.padding is not None else None,
            "settings": self.settings.model_dump_json() if self.settings is not None else None,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "GatewaySpec":
        return cls(
            host=doc["host"],
            port=doc["port"],
            engine_socket=doc["engine_socket"],
            key_records=doc["keys"],
            salt_secret=bytes.fromhex(doc["salt"]),
            limits=ServerLimits(**doc["limits"]),
            manifest=Manifest.model_validate_json(doc["manifest"]) if doc["manifest"] else None,
            engine=doc["engine"],
            padding=PaddingSettings.model_validate_json(doc["padding"]) if doc["padding"] else None,
            settings=GatewaySettings.model_validate_json(doc["settings"]) if doc["settings"] else None,
        )


def build_app(spec: GatewaySpec, shared: "SharedState") -> "GatewayApp":
    """The gateway app of one process (the worker's own, or a child's), from ``spec``."""
    from veil import keyrelease
    from veil.worker.engine_link import EngineLink
    from veil.worker.gateway import create_gateway_app

    return create_gateway_app(
        keyrelease.import_ohttp_keys(spec.key_records),
        EngineLink(spec.engine_socket),
        manifest=spec.manifest,
        engine=spec.engine,
        padding=spec.padding,
        settings=spec.settings,
        tenant_salt_secret=spec.salt_secret,
        shared=shared,
    )


class GatewayPool:
    """The worker's extra gateway processes (``processes - 1`` of them), their channels, and the
    thread that replaces one that dies."""

    CHECK_SECONDS = 0.5
    MAX_RESTARTS = 5
    RESTART_WINDOW_SECONDS = 60.0

    def __init__(self, processes: int, spec: GatewaySpec, shared_fd: int) -> None:
        self.children: list[tuple[subprocess.Popen[bytes], socket.socket]] = []
        self.spec = dataclasses.replace(spec)  # what a replacement starts from: kept current with every change sent
        self.shared_fd = shared_fd
        self.restarts: deque[float] = deque()  # monotonic times of the replacements in the window
        self._lock = threading.Lock()  # children, spec and every send: a replacement misses nothing
        self._done = threading.Event()  # set by stop() and close(): nothing is replaced after
        with self._lock:
            for _ in range(processes - 1):
                self.children.append(self._spawn())
        self._watcher = threading.Thread(target=self._watch, name="veil-gateway-watch", daemon=True)
        if self.children:
            self._watcher.start()

    def _spawn(self) -> tuple[subprocess.Popen[bytes], socket.socket]:
        """One child, given the current spec as its first line (called with the lock held)."""
        mine, theirs = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-m", "veil.worker.pool", str(theirs.fileno()), str(self.shared_fd)],
            pass_fds=(theirs.fileno(), self.shared_fd),
            preexec_fn=lambda: die_with_parent(signal.SIGKILL),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        mine.sendall((json.dumps(self.spec.to_json()) + "\n").encode())
        return proc, mine

    def _watch(self) -> None:
        while not self._done.wait(self.CHECK_SECONDS):
            with self._lock:
                if not self._done.is_set():
                    self._replace_dead()

    def _replace_dead(self) -> None:
        """Replace each child that exited, within the restart budget (called with the lock held)."""
        for i, (proc, channel) in enumerate(self.children):
            code = proc.poll()
            if code is None:
                continue
            now = time.monotonic()
            while self.restarts and now - self.restarts[0] > self.RESTART_WINDOW_SECONDS:
                self.restarts.popleft()
            if len(self.restarts) >= self.MAX_RESTARTS:
                log.error(
                    "gateway process %d exited (%s); not replaced: %d replacements in the last %.0f s",
                    proc.pid,
                    _exit_status(code),
                    len(self.restarts),
                    self.RESTART_WINDOW_SECONDS,
                )
                channel.close()
                del self.children[i]
                return  # the list changed; the next check looks at the rest
            self.restarts.append(now)
            channel.close()
            self.children[i] = self._spawn()
            log.error("gateway process %d exited (%s); replaced by %d", proc.pid, _exit_status(code), self.children[i][0].pid)

    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.children]

    def _send(self, message: dict[str, Any]) -> None:
        line = (json.dumps(message) + "\n").encode()
        with self._lock:
            if "keys" in message:
                self.spec.key_records = message["keys"]
            if "manifest" in message:
                self.spec.manifest = Manifest.model_validate_json(message["manifest"])
            for proc, channel in self.children:
                try:
                    channel.sendall(line)
                except OSError:
                    log.error("gateway process %d cannot be reached; killing it", proc.pid)
                    proc.kill()  # it can no longer be told about key changes: it must not serve on

    def keys(self, records: list[dict[str, object]]) -> None:
        """Every process now serves exactly these keys (a rotation without a new manifest)."""
        self._send({"keys": records})

    def manifest(self, manifest: Manifest, records: list[dict[str, object]]) -> None:
        """Every process applies a newer manifest and the keys that came with it."""
        self._send({"manifest": manifest.model_dump_json(), "keys": records})

    def stop(self, reason: str) -> None:
        """Every process forgets its keys and exits (the worker failed closed); none is replaced."""
        self._done.set()
        self._send({"stop": reason})

    def close(self) -> None:
        self._done.set()
        if self._watcher.is_alive():
            self._watcher.join()  # a replacement under way finishes first, and is closed below
        for _, channel in self.children:
            channel.close()  # a child stops serving when its channel closes
        for proc, _ in self.children:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()


def _exit_status(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def _follow(lines: Any, app: "GatewayApp", server: uvicorn.Server) -> None:
    """A child's side of the channel: apply what the worker sends; its end stops this process."""
    from veil import keyrelease

    gateway = app.state.gateway
    reason = "gateway.worker_gone"
    for line in lines:
        message = json.loads(line)
        if "stop" in message:
            reason = str(message["stop"])
            break
        keys = keyrelease.import_ohttp_keys(message["keys"])
        if "manifest" in message:
            gateway.apply_manifest(Manifest.model_validate_json(message["manifest"]), keys)
        else:
            gateway.keys = keys
    gateway.stop(reason)  # no key left: nothing more can be decrypted here
    server.should_exit = True


def _child(channel_fd: int, shared_fd: int) -> None:
    from veil.sandbox.hardening import forbid_core_dumps
    from veil.worker.shared_state import SharedState

    forbid_core_dumps()  # before any key arrives
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    lines = socket.socket(fileno=channel_fd).makefile("rb")
    spec = GatewaySpec.from_json(json.loads(lines.readline()))
    app = build_app(spec, SharedState.attach(shared_fd))
    server = make_server(app, host=spec.host, port=spec.port, limits=spec.limits)
    threading.Thread(target=_follow, args=(lines, app, server), name="veil-gateway-follow", daemon=True).start()
    server.run(sockets=[reuseport_socket(spec.host, spec.port)])


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
