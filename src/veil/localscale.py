"""`veil up --workers N --coordinators M`: where each replica listens, and the HAProxy in front.

With one coordinator and one worker nothing changes: they listen on the public ports themselves.
With more, each replica gets a private loopback port and the shipped balancer
(deploy/haproxy/balancer.cfg, see veil.balancer) takes the public ones: the gateway port spreads
requests over workers (least connections, health-checked on the OHTTP gateway), the coordinator
port over coordinators (cookie-pinned, health-checked on /health). The client policy and the
workers name the public ports, so they reach the replicas only through the balancer.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from veil.balancer import Backend, HAProxy, render


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Topology:
    host: str
    coordinator_port: int  # public: the balancer's when coordinators > 1
    worker_port: int  # public: the balancer's when workers > 1
    workers: int = 1
    coordinators: int = 1
    coordinator_ports: list[int] = field(default_factory=list)
    worker_ports: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.coordinators < 1:
            raise ValueError("at least one worker and one coordinator")
        self.coordinator_ports = (
            [self.coordinator_port] if self.coordinators == 1 else [_free_port(self.host) for _ in range(self.coordinators)]
        )
        self.worker_ports = [self.worker_port] if self.workers == 1 else [_free_port(self.host) for _ in range(self.workers)]

    @property
    def balanced(self) -> bool:
        return self.workers > 1 or self.coordinators > 1

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    @property
    def coordinator_urls(self) -> list[str]:
        """Each coordinator's own address (admins recover each replica separately)."""
        return [self.url(p) for p in self.coordinator_ports]

    def balancer(self, workdir: Path) -> tuple[HAProxy, list[str]]:
        """The balancer for this topology and the binds to wait for."""
        env: dict[str, str] = {}
        backends: list[Backend] = []
        binds: list[str] = []
        if self.workers > 1:
            env["VEIL_GATEWAY_BIND"] = f"{self.host}:{self.worker_port}"
            backends.append(Backend("gateways", "worker", [f"{self.host}:{p}" for p in self.worker_ports]))
            binds.append(env["VEIL_GATEWAY_BIND"])
        if self.coordinators > 1:
            env["VEIL_COORDINATOR_BIND"] = f"{self.host}:{self.coordinator_port}"
            backends.append(
                Backend("coordinators", "coordinator", [f"{self.host}:{p}" for p in self.coordinator_ports], cookies=True)
            )
            binds.append(env["VEIL_COORDINATOR_BIND"])
        return HAProxy(render("balancer.cfg", backends), env, workdir, stats_socket=workdir / "haproxy.sock"), binds
