"""Start an engine process (optionally inside a sandbox wrapper) and talk to it over its socket.

The worker owns one ``EngineProcess``: it spawns ``python -m veil.engines.<engine>`` behind a
wrapper argv such as ``["bwrap", ...]``, waits until ``/health`` answers on the Unix socket, and
kills the engine on stop. The engine also dies on its own if this process dies (PR_SET_PDEATHSIG),
so a crashed gateway never leaves decrypted weights behind in an orphan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from veil.errors import VeilError

ENGINE_BASE_URL = "http://engine"
_TAIL = 4000


class EngineStartError(VeilError):
    """The engine exited or did not answer /health in time (reason ``engine.start_failed``)."""


def engine_transport(socket_path: str | Path) -> httpx.AsyncHTTPTransport:
    """An httpx transport to the engine's socket (retries cover the bind/listen race)."""
    return httpx.AsyncHTTPTransport(uds=str(socket_path), retries=2)


async def engine_client(
    socket_path: str | Path, timeout: httpx.Timeout | float | None = None
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests go to the engine's Unix socket.

    Reads may wait behind queued generations, so the default read timeout is long (5 min).
    """
    return httpx.AsyncClient(
        transport=engine_transport(socket_path),
        base_url=ENGINE_BASE_URL,
        timeout=timeout if timeout is not None else httpx.Timeout(300.0, connect=5.0),
    )


class EngineProcess:
    """One engine subprocess serving the OpenAI API on ``socket_path``.

    Unsealed weights never touch disk: put them in a memfd, pass its descriptor in ``pass_fds``
    and give ``model="/proc/self/fd/N"`` (plus ``model_id``, since that path names nothing).
    Spawn it from a long-lived thread (normally the event loop's): Linux delivers the engine's
    parent-death signal when the *thread* that forked it exits.
    """

    def __init__(
        self,
        socket_path: str | Path,
        model: str | Path | None = None,
        *,
        wrapper: Sequence[str] = (),
        engine_module: str = "veil.engines.llamacpp",
        n_ctx: int = 2048,
        threads: int | None = None,
        model_id: str | None = None,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
        log_path: str | Path | None = None,
        pass_fds: Sequence[int] = (),
        stdin_fd: int | None = None,
    ) -> None:
        self._socket_path = Path(socket_path)
        self.model = Path(model) if model is not None else None
        self.wrapper = list(wrapper)
        self.engine_module = engine_module
        self.n_ctx = n_ctx
        self.threads = threads
        self.model_id = model_id
        self.extra_args = list(extra_args)
        self.python = python
        self.env = env
        self.startup_timeout = startup_timeout
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path is not None else None
        self.pass_fds = tuple(pass_fds)
        self.stdin_fd = stdin_fd  # e.g. unsealed weights in a memfd, read as /proc/self/fd/0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self._socket_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def command(self) -> list[str]:
        """The full argv: wrapper prefix, then the engine module and its flags."""
        argv = [self.python, "-m", self.engine_module, "--socket", str(self._socket_path),
                "--n-ctx", str(self.n_ctx)]
        if self.model is not None:
            argv += ["--model", str(self.model)]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        if self.model_id is not None:
            argv += ["--model-id", self.model_id]
        if not self.wrapper:  # inside a PID namespace our pid means nothing to the engine
            argv += ["--parent-pid", str(os.getpid())]
        return [*self.wrapper, *argv, *self.extra_args]

    def log_text(self) -> str:
        """Everything the engine wrote to stdout/stderr so far (it never logs request content)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def _spawn(self) -> None:
        if self._proc is not None:
            raise RuntimeError("engine already started")
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="veil-engine-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL if self.stdin_fd is None else self.stdin_fd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                pass_fds=self.pass_fds,  # e.g. a memfd holding unsealed weights
                start_new_session=True,  # so stop() can signal the wrapper and engine together
            )

    def _check_alive(self) -> None:
        assert self._proc is not None
        if (rc := self._proc.poll()) is not None:
            tail = self.log_text()[-_TAIL:]
            raise EngineStartError(
                "engine.start_failed",
                f"engine exited with status {rc} before it was ready:\n{tail}",
            )

    def _timed_out(self) -> EngineStartError:
        tail = self.log_text()[-_TAIL:]
        self.stop()
        return EngineStartError(
            "engine.start_failed",
            f"engine did not answer /health within {self.startup_timeout:.0f}s:\n{tail}",
        )

    def start(self) -> EngineProcess:
        """Spawn the engine and block until ``/health`` answers."""
        self._spawn()
        deadline = time.monotonic() + self.startup_timeout
        transport = httpx.HTTPTransport(uds=str(self._socket_path))
        with httpx.Client(transport=transport, base_url=ENGINE_BASE_URL, timeout=2.0) as client:
            while True:
                self._check_alive()
                if self._socket_path.exists():
                    with contextlib.suppress(httpx.TransportError):
                        if client.get("/health").status_code == 200:
                            return self
                if time.monotonic() > deadline:
                    raise self._timed_out()
                time.sleep(0.05)

    async def astart(self) -> EngineProcess:
        """Like start(), without blocking the event loop (the fork itself stays on this thread)."""
        self._spawn()
        deadline = time.monotonic() + self.startup_timeout
        async with await engine_client(self._socket_path, timeout=2.0) as client:
            while True:
                self._check_alive()
                if self._socket_path.exists():
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/health")).status_code == 200:
                            return self
                if time.monotonic() > deadline:
                    raise self._timed_out()
                await asyncio.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the engine's process group, SIGKILL it after ``timeout``; return its status."""
        proc, self._proc = self._proc, None
        rc = None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        with contextlib.suppress(FileNotFoundError):
            if self._socket_path.is_socket():
                self._socket_path.unlink()
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None
        return rc

    def __enter__(self) -> EngineProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EngineProcess:
        return await self.astart()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
