"""HAProxy in front of Veil replicas: the shipped configurations of deploy/haproxy, rendered and run.

Two configurations ship in ``deploy/haproxy/`` and are used as they are: ``balancer.cfg`` (least
connections over workers, cookie-pinned coordinators, health checks on the OHTTP gateway) and
``relay.cfg`` (an RFC 9458 relay). Binds and upstreams come from environment variables, server
lines go in at the file's ``# servers: NAME`` markers. Nothing is home-made here: this module only
fills in a real HAProxy configuration and supervises the haproxy process (Debian's package,
installed by scripts/install-system-deps.sh); ``veil up --workers/--coordinators`` and the tests
use it. HAProxy is untrusted like any network hop: it sees ciphertext and decides availability.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from veil.errors import VeilError
from veil.process import die_with_parent

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "haproxy"


class BalancerError(VeilError):
    """HAProxy is missing, its configuration is refused, or it did not come up."""


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise BalancerError("balancer.haproxy_missing", "haproxy is not installed (scripts/install-system-deps.sh installs it)")
    return found


def shipped_config(name: str) -> str:
    """The text of ``deploy/haproxy/<name>`` from this checkout."""
    path = DEPLOY_DIR / name
    try:
        return path.read_text()
    except FileNotFoundError:
        raise BalancerError(
            "balancer.config_missing", f"{path} is missing (the HAProxy configurations ship in the source tree)"
        ) from None


@dataclass(frozen=True)
class Backend:
    """One marker's servers: ``addresses`` are host:port of the replicas, named ``<prefix><n>``."""

    marker: str
    prefix: str
    addresses: list[str]
    cookies: bool = False  # pin a client to a server (the coordinators' challenge/register pairs)

    def lines(self) -> str:
        return "\n".join(
            f"    server {self.prefix}{i} {addr}" + (f" cookie {self.prefix}{i}" if self.cookies else "")
            for i, addr in enumerate(self.addresses, 1)
        )


def render(name: str, backends: list[Backend] = ()) -> str:  # type: ignore[assignment]
    """The shipped configuration ``name`` with each backend's server lines at its marker."""
    text = shipped_config(name)
    for backend in backends:
        marker = f"    # servers: {backend.marker}\n"
        if marker not in text:
            raise BalancerError("balancer.config_missing", f"{name} has no '# servers: {backend.marker}' marker")
        text = text.replace(marker, marker + backend.lines() + "\n")
    return text


@dataclass
class HAProxy:
    """A haproxy process on a rendered configuration, with its variables in the environment.

    ``wait_ready`` blocks until every bind accepts connections. With ``stats_socket`` set (the
    balancer's ``VEIL_STATS_SOCKET``), ``server_states`` reads the runtime API's ``show stat``.
    """

    config: str
    env: dict[str, str]
    workdir: Path
    stats_socket: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    def check(self) -> None:
        """``haproxy -c``: refuse a configuration before anything listens on it."""
        self._write()
        done = subprocess.run(
            [haproxy_binary(), "-c", "-q", "-f", str(self.config_path)],
            env=self._environ(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise BalancerError("balancer.config_refused", f"haproxy refused {self.config_path}: {done.stderr.strip()[-2000:]}")

    def start(self, binds: list[str], timeout: float = 20.0) -> None:
        self.check()
        with open(self.log_path, "ab") as log:
            # Own session (Ctrl-C goes to `veil up`, which stops us); dies with its parent.
            self.proc = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(self.config_path)],
                env=self._environ(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM),
            )
        self.wait_ready(binds, timeout)

    def _check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BalancerError("balancer.exited", f"haproxy exited: {self.log_path.read_text(errors='replace')[-2000:]}")

    def wait_ready(self, binds: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for bind in binds:
            host, _, port = bind.rpartition(":")
            while True:
                self._check_running()
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise BalancerError(
                            "balancer.timeout", f"haproxy did not listen on {bind} within {timeout:.0f} s"
                        ) from None
                    time.sleep(0.05)

    def wait_servers_up(self, backend: str, timeout: float) -> None:
        """Block until the health checks mark every server of ``backend`` UP: a deployment is
        announced ready only when the balancer routes to all of its replicas."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_running()
            states = {k: v["status"] for k, v in self.server_states().items() if k.startswith(backend + "/")}
            if states and all(s == "UP" for s in states.values()):
                return
            if time.monotonic() > deadline:
                raise BalancerError(
                    "balancer.timeout", f"haproxy did not mark every {backend} server UP within {timeout:.0f} s: {states}"
                )
            time.sleep(0.1)

    def server_states(self) -> dict[str, dict[str, str]]:
        """``backend/server`` -> the runtime API's fields (``status`` UP/DOWN, ``stot`` sessions...)."""
        if self.stats_socket is None:
            raise BalancerError("balancer.no_stats", "this haproxy has no stats socket")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        lines = raw.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            if not line:
                continue
            row = dict(zip(header, line.split(",")))
            if row["svname"] not in ("FRONTEND", "BACKEND"):
                out[f"{row['pxname']}/{row['svname']}"] = row
        return out

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config)

    def _environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
        env.update(self.env)
        if self.stats_socket is not None:
            env["VEIL_STATS_SOCKET"] = str(self.stats_socket)
        return env

    def __enter__(self) -> "HAProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
