"""Test and benchmark support — never part of a deployment.

* :class:`ServerThread`: an ASGI app under a real uvicorn server (Veil's server limits) on a free
  loopback port, in a background thread.
* :class:`FakeEngine`: a **fake** OpenAI-compatible engine with no model behind it, streaming
  events as fast as asked, so tests and ``bench/`` can measure and attack the gateway alone.
* ``python -m veil.testing engine|gateway``: the fake engine on a Unix socket, or the real gateway
  (Veil's server limits) in front of a fake engine, as separate processes for attack tests and
  benchmarks. The gateway reads its OHTTP private key (hex) from stdin, never from argv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from veil.attest.attester import Attester
from veil.httpserver import ServerLimits, server_config
from veil.process import die_with_parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listeners(port: int) -> int:
    """How many sockets listen on loopback TCP ``port`` (each gateway process has its own)."""
    count = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                count += 1
    return count


class ServerThread:
    """uvicorn in a background thread; ``url`` is ready when the constructor returns.

    With ``uds`` it listens on that Unix socket instead (``url`` is then ``http://localhost``).
    """

    def __init__(
        self, app: Any, port: int | None = None, *, uds: str | None = None, limits: ServerLimits = ServerLimits()
    ) -> None:
        self.port = None if uds else (port or free_port())
        self.url = "http://localhost" if uds else f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, host="127.0.0.1", port=self.port, uds=uds, limits=limits))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the fake engine ------------------------------------------------------------------------------


@dataclass
class FakeEngine:
    """A FAKE OpenAI-compatible engine (tests and benchmarks only): no model, canned tokens.

    ``/v1/chat/completions`` and ``/v1/completions`` answer ``tokens`` tokens (fewer if
    ``max_tokens`` says so), streamed as SSE when asked, ``rate`` events per second (None: as fast as the
    loop goes), with OpenAI's ``usage`` block (and the final usage event when
    ``stream_options.include_usage`` is set). ``/v1/models`` lists ``model``; ``/v1/embeddings``
    returns a fixed vector per input; ``/fake/headers`` answers the request headers it received. ``record``, when a list, receives each request's headers and
    JSON body, so a test can see exactly what reached the engine. A raw ASGI app, kept small so
    that benchmarks measure the gateway rather than this.
    """

    tokens: int = 16
    rate: float | None = None
    model: str = "fake-model"
    text: str = " tok"
    record: list[tuple[dict[str, str], Any]] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        path = scope["path"]
        if path == "/fake/headers":  # what reached the engine, for tests of the gateway's allowlist
            return await _json(send, 200, {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]})
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            return await _json(
                send,
                400,
                {"error": {"message": "invalid JSON", "type": "invalid_request_error", "param": None, "code": "invalid_json"}},
            )
        if self.record is not None:
            self.record.append(({k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}, doc))
        if path == "/v1/models":
            return await _json(
                send, 200, {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "veil-fake"}]}
            )
        if path == "/v1/embeddings":
            inputs = doc.get("input", [])
            inputs = inputs if isinstance(inputs, list) else [inputs]
            data = [{"object": "embedding", "index": i, "embedding": [0.0, 1.0, 0.5]} for i in range(len(inputs))]
            return await _json(
                send,
                200,
                {
                    "object": "list",
                    "model": self.model,
                    "data": data,
                    "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                },
            )
        if path not in ("/v1/chat/completions", "/v1/completions"):
            return await _json(
                send,
                404,
                {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": "not_found"}},
            )
        chat = path == "/v1/chat/completions"
        limit = doc.get("max_tokens") or doc.get("max_completion_tokens")
        n = min(limit, self.tokens) if isinstance(limit, int) and limit > 0 else self.tokens  # stops early, like EOS
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": 1 + n}
        if not doc.get("stream"):
            text = self.text * n
            choice = (
                {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "finish_reason": "length", "text": text}
            )
            return await _json(
                send,
                200,
                {
                    "id": "fake-1",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": 0,
                    "model": self.model,
                    "choices": [choice],
                    "usage": usage,
                },
            )
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        delay = 1.0 / self.rate if self.rate else 0.0
        delta = {"content": self.text} if chat else None
        choice = (
            {"index": 0, "delta": delta, "finish_reason": None}
            if chat
            else {"index": 0, "text": self.text, "finish_reason": None}
        )
        event = {
            "id": "fake-1",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 0,
            "model": self.model,
            "choices": [choice],
        }
        wire = b"data: " + json.dumps(event).encode() + b"\n\n"  # built once: the engine's cost stays small
        for _ in range(n):
            if delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": wire, "more_body": True})
        tail = b""
        if (doc.get("stream_options") or {}).get("include_usage"):
            final = {
                "id": "fake-1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
            tail = b"data: " + json.dumps(final).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})


async def _json(send: Any, status: int, doc: dict[str, Any]) -> None:
    raw = json.dumps(doc).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": raw})


class GatewayProcess:
    """The real gateway in its own process (``python -m veil.testing gateway``) in front of a fake
    engine process: what attack tests and benchmarks talk to over loopback. ``stderr`` collects
    both processes' logs. Options are those of the command (``compat=True``, ``padding="off"``,
    ``tokens=``, ``rate=``, ``max_connections=``, ``header_timeout=``, ``body_timeout=``)."""

    def __init__(self, run_dir: Path, *, nofile: int | None = None, pair: Any = None, **options: Any) -> None:
        """``pair``: the OHTTP key pair to serve (replicas behind a balancer share one)."""
        from veil.ohttp.keyconfig import KeyPair

        self.pair = pair or KeyPair.generate(options.pop("key_id", 1))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = run_dir / "gateway.stderr"
        self.engine_socket = str(run_dir / "engine.sock")
        argv = [
            sys.executable,
            "-m",
            "veil.testing",
            "gateway",
            "--port",
            str(self.port),
            "--engine-uds",
            self.engine_socket,
            "--key-id",
            str(self.pair.key_id),
        ]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            argv += [flag] if value is True else [] if value is False else [flag, str(value)]
        self._err = open(self.stderr_path, "wb")
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=self._err, stderr=self._err, preexec_fn=limit)
        assert self.proc.stdin is not None
        self.proc.stdin.write(self.pair.private_bytes().hex().encode() + b"\n")
        self.proc.stdin.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("gateway process did not start: " + self.stderr())
                time.sleep(0.05)
        while listeners(self.port) < options.get("processes", 1):  # every gateway process is serving
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("gateway processes did not start: " + self.stderr())
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def gateway_pids(self) -> list[int]:
        """The gateway's own processes (not the fake engine's): what benchmarks charge to it."""
        pids = [self.proc.pid]
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as cmd:
                    if b"veil.worker.pool" in cmd.read():
                        pids.append(int(child))
        return pids

    def victim(self, timeout: float = 30.0) -> float:
        """One legitimate streamed chat on a fresh connection, through Veil's own transport; its
        latency in seconds (raises if it fails)."""
        from veil.client.transport import OhttpTransport

        start = time.perf_counter()
        with httpx.Client(transport=OhttpTransport(self.pair.config, self.url), timeout=timeout) as http:
            r = http.post(
                "http://api/v1/chat/completions",
                json={"model": "m", "stream": True, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            )
            if r.status_code != 200 or "[DONE]" not in r.text:
                raise RuntimeError(f"victim request failed: HTTP {r.status_code}")
        return time.perf_counter() - start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Attacker:
    """A bounded load generator in its own process (so it never shares the test's GIL): runs
    ``source`` (Python, given ``sys.argv[1:]`` = ``args``); the script must stop by itself and
    print one JSON object as its last line, returned by :meth:`result`."""

    def __init__(self, source: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", source, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError("attacker failed: " + err.decode(errors="replace")[-2000:])
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    def __enter__(self) -> "Attacker":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def victim_latencies(gateway: GatewayProcess, count: int, *, pause: float = 0.0, timeout: float = 30.0) -> list[float]:
    """``count`` sequential victim requests (see :meth:`GatewayProcess.victim`), in seconds."""
    out = []
    for _ in range(count):
        out.append(gateway.victim(timeout))
        time.sleep(pause)
    return out


@dataclass
class VictimReport:
    quiet: float  # the victim's median latency before the attack (s)
    loud: list[float]  # its latencies during the attack (s)
    attacker: dict[str, Any]  # what the attacker's script reported

    def __str__(self) -> str:
        import statistics

        return (
            f"victim: quiet median {self.quiet * 1000:.1f} ms; under attack median "
            f"{statistics.median(self.loud) * 1000:.1f} ms, max {max(self.loud) * 1000:.1f} ms; attacker: {self.attacker}"
        )


def victim_under_attack(
    gateway: GatewayProcess,
    source: str,
    *args: str,
    build_up: float = 1.0,
    count: int = 8,
    pause: float = 0.2,
    timeout: float = 30.0,
) -> VictimReport:
    """A legitimate client's latency, quiet and then while the :class:`Attacker` ``source`` runs."""
    import statistics

    victim_latencies(gateway, 2)  # warm up
    quiet = statistics.median(victim_latencies(gateway, 5))
    with Attacker(source, *args) as attacker:
        time.sleep(build_up)
        loud = victim_latencies(gateway, count, pause=pause, timeout=timeout)
        report = attacker.result()
    return VictimReport(quiet, loud, report)


def flood_script(attack_once: str) -> str:
    """An :class:`Attacker` script: ``threads`` threads call ``attack_once()`` (defined by the given
    source, which may read ``url``, ``config``, ``deadline``) until ``seconds`` have passed, and the
    outcomes it returns are counted. Arguments: url, key config (hex), seconds, threads."""
    return (
        textwrap.dedent("""
        import json, sys, threading, time
        import httpx
        from veil.ohttp.keyconfig import KeyConfig

        url, config = sys.argv[1], KeyConfig.decode(bytes.fromhex(sys.argv[2]))
        seconds, threads = float(sys.argv[3]), int(sys.argv[4])
        deadline = time.monotonic() + seconds
        stats, lock = {"attempts": 0, "outcomes": {}}, threading.Lock()
    """)
        + textwrap.dedent(attack_once)
        + textwrap.dedent("""
        def loop():
            while time.monotonic() < deadline:
                outcome = attack_once()
                with lock:
                    stats["attempts"] += 1
                    stats["outcomes"][outcome] = stats["outcomes"].get(outcome, 0) + 1

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print(json.dumps(stats))
    """)
    )


# -- processes ------------------------------------------------------------------------------------


def _run_engine(args: argparse.Namespace) -> None:
    engine = FakeEngine(tokens=args.tokens, rate=args.rate)
    uvicorn.Server(server_config(engine, uds=args.uds)).run()


def _run_gateway(args: argparse.Namespace) -> None:
    from veil.keyrelease import export_ohttp_keys
    from veil.manifest import GatewaySettings, PaddingSettings
    from veil.ohttp.keyconfig import KeyPair, KeyStore
    from veil.worker.pool import GatewayPool, GatewaySpec, build_app, reuseport_socket
    from veil.worker.replay import DEFAULT_CAPACITY
    from veil.worker.shared_state import SharedState

    key = bytes.fromhex(sys.stdin.readline().strip())
    sock = Path(args.engine_uds)
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil.testing",
            "engine",
            "--uds",
            str(sock),
            "--tokens",
            str(args.tokens),
            *(["--rate", str(args.rate)] if args.rate else []),
        ],
        preexec_fn=lambda: die_with_parent(signal.SIGKILL),
    )  # never outlives the gateway
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline or engine.poll() is not None:
                raise SystemExit("the fake engine did not start")
            time.sleep(0.02)
        padding = PaddingSettings(requests=None, responses=None, stream_chunks=None) if args.padding == "off" else None
        limits = ServerLimits(
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            max_connections=args.max_connections,
            fds_per_connection=2,
        )
        spec = GatewaySpec(
            host="127.0.0.1",
            port=args.port,
            engine_socket=str(sock),
            key_records=export_ohttp_keys(KeyStore([KeyPair.from_private_bytes(args.key_id, key)])),
            salt_secret=os.urandom(32),
            limits=limits,
            padding=padding,
            settings=GatewaySettings(ohttpy_compat=args.compat),
        )
        shared = SharedState.create(DEFAULT_CAPACITY)
        app = build_app(spec, shared)
        server = uvicorn.Server(server_config(app, host="127.0.0.1", port=args.port, limits=limits))
        listener = reuseport_socket("127.0.0.1", args.port, first=True)
        pool = GatewayPool(args.processes, spec, shared.fd)  # the same worker pieces as veil.worker.serve
        try:
            server.run(sockets=[listener])
        finally:
            pool.close()
    finally:
        engine.terminate()
        engine.wait(timeout=10)


class SerializedAttester:
    """Test/bench only: an attester that costs what a security processor does, one report at a time.

    Wraps a real attester (e.g. sim-snp); every report takes at least ``cost_s`` and reports never
    overlap, as on SEV-SNP (firmware) or TDX (the quoting enclave). ``reports`` counts them.
    """

    def __init__(self, inner: Attester, cost_s: float) -> None:
        self.inner, self.cost_s, self.platform = inner, cost_s, inner.platform
        self.reports = 0
        self._chip = threading.Lock()

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        with self._chip:
            start = time.perf_counter()
            out = self.inner.evidence(report_data)
            self.reports += 1
            time.sleep(max(0.0, self.cost_s - (time.perf_counter() - start)))
            return out

    def sealing_key(self) -> bytes:
        return self.inner.sealing_key()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m veil.testing", description="Test/bench-only servers (FAKE engine).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    eng = sub.add_parser("engine", help="the fake engine on a Unix socket")
    eng.add_argument("--uds", required=True)
    gw = sub.add_parser("gateway", help="the real gateway (key hex on stdin) in front of a fake engine")
    gw.add_argument("--port", type=int, required=True)
    gw.add_argument("--engine-uds", required=True)
    gw.add_argument("--key-id", type=int, default=1)
    gw.add_argument("--padding", choices=("on", "off"), default="on")
    gw.add_argument("--compat", action="store_true", help="also serve ohttpy's variant on /score")
    gw.add_argument("--header-timeout", type=float, default=ServerLimits.header_timeout)
    gw.add_argument("--body-timeout", type=float, default=ServerLimits.body_timeout)
    gw.add_argument("--max-connections", type=int, default=ServerLimits.max_connections)
    gw.add_argument("--processes", type=int, default=1, help="gateway processes on the port (veil.worker.pool)")
    for p in (eng, gw):
        p.add_argument("--tokens", type=int, default=16)
        p.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    args = parser.parse_args(argv)
    (_run_engine if args.cmd == "engine" else _run_gateway)(args)


if __name__ == "__main__":
    main()
