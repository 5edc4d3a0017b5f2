"""Start an engine process inside its sandbox and talk to it over its Unix socket.

The worker owns one ``EngineProcess``: it spawns ``python -m veil.engines.<engine>`` confined by a
``SandboxProfile`` (the manifest's), waits until ``/health`` answers on the Unix socket, and kills
the engine on stop. ``restart(sandbox=...)`` stops it and starts it again under another profile,
which is how a manifest that changes the profile is enforced before it is acknowledged. The
engine also dies on its own if this process dies (PR_SET_PDEATHSIG), so a crashed gateway never
leaves decrypted weights behind in an orphan.

The engine's stdout and stderr go to a pipe that this process drains; nothing it prints is written
anywhere, and for a confined engine only fixed messages are kept (``veil.sandbox.output``).
``sandbox=None`` runs the engine as a plain child process, for tests and benchmarks only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from veil.errors import VeilError
from veil.sandbox import cgroup, socketdir
from veil.sandbox.hardening import engine_identity
from veil.sandbox.output import EngineOutput

if TYPE_CHECKING:
    from veil.sandbox.profile import SandboxProfile

log = logging.getLogger(__name__)
ENGINE_BASE_URL = "http://engine"
GVISOR_TASKS = 512  # host threads of runsc, its gofer and the Sentry, on top of the engine's
GVISOR_STUBS = 4  # host tasks per engine process under gVisor's ptrace platform (stubs)
_TAIL = 4000  # characters of an unconfined engine's output shown when it fails to start


class EngineStartError(VeilError):
    """The engine exited or did not answer /health in time (reason ``engine.start_failed``)."""


def engine_transport(socket_path: str | Path) -> httpx.AsyncHTTPTransport:
    """An httpx transport to the engine's socket (retries cover the bind/listen race)."""
    return httpx.AsyncHTTPTransport(uds=str(socket_path), retries=2)


async def engine_client(socket_path: str | Path, timeout: httpx.Timeout | float | None = None) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` whose requests go to the engine's Unix socket.

    Reads may wait behind queued generations, so the default read timeout is long (5 min).
    """
    return httpx.AsyncClient(
        transport=engine_transport(socket_path),
        base_url=ENGINE_BASE_URL,
        timeout=timeout if timeout is not None else httpx.Timeout(300.0, connect=5.0),
    )


class EngineProcess:
    """One engine subprocess serving the OpenAI API on ``socket_path``, confined by ``sandbox``.

    Unsealed weights never touch disk: put them in a sealed memfd and pass it as ``stdin_fd`` with
    ``model="/proc/self/fd/0"`` (plus ``model_id``, since that path names nothing); a model file
    is bound into the sandbox read-only. ``engine_module`` is a module run with ``python -m`` or a
    path to a script. Spawn it from a long-lived thread (normally the event loop's): Linux
    delivers the engine's parent-death signal when the *thread* that forked it exits.

    Confined, the socket's directory belongs to the engine: it must hold nothing else, is made
    fresh (a small tmpfs when root) at every start and wiped at stop (``veil.sandbox.socketdir``),
    and each start gets a cgroup where the host offers one (``veil.sandbox.cgroup``).
    """

    def __init__(
        self,
        socket_path: str | Path,
        model: str | Path | None = None,
        *,
        sandbox: SandboxProfile | None = None,
        ro_binds: Sequence[str] = (),
        engine_module: str = "veil.engines.llamacpp",
        n_ctx: int | None = None,
        threads: int | None = None,
        model_id: str | None = None,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        startup_timeout: float = 120.0,
        pass_fds: Sequence[int] = (),
        stdin_fd: int | None = None,
    ) -> None:
        self._socket_path = Path(socket_path)
        self.model = Path(model) if model is not None else None
        self.sandbox = sandbox
        self.ro_binds = tuple(ro_binds)
        self.engine_module = engine_module
        self.n_ctx = n_ctx
        self.threads = threads
        self.model_id = model_id
        self.extra_args = list(extra_args)
        self.python = python
        self.env = env
        self.startup_timeout = startup_timeout
        self.pass_fds = tuple(pass_fds)
        self.stdin_fd = stdin_fd  # e.g. unsealed weights in a memfd, read as /proc/self/fd/0
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: EngineOutput | None = None
        self._running_profile: SandboxProfile | None = None
        self.cgroup: cgroup.EngineCgroup | None = None  # the running engine's, where offered
        self.cgroup_unavailable: str | None = None  # why there is none (said plainly)
        self.socket_dir_kind: str | None = None  # "tmpfs" or "directory" (see socketdir)
        self._prepared = False

    @property
    def socket_path(self) -> Path:
        return self._socket_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def profile(self) -> SandboxProfile | None:
        """The profile the running engine is confined by (None when stopped or unsandboxed)."""
        return self._running_profile if self._proc is not None else None

    @property
    def confined(self) -> bool:
        """True when the engine runs inside a sandbox (any profile but "none")."""
        return self.sandbox is not None and self.sandbox.enforced

    def _engine_argv(self) -> list[str]:
        if self.engine_module.endswith(".py"):
            argv = [self.python, self.engine_module]
        else:
            argv = [self.python, "-m", self.engine_module]
        argv += ["--socket", str(self._socket_path)]
        if self.n_ctx is not None:  # engines refuse flags they do not use (veil.engines.cli)
            argv += ["--n-ctx", str(self.n_ctx)]
        if self.model is not None:
            argv += ["--model", str(self.model)]
        if self.threads is not None:
            argv += ["--threads", str(self.threads)]
        if self.model_id is not None:
            argv += ["--model-id", self.model_id]
        return argv

    def _binds(self) -> list[str]:
        """Host paths the engine must read: its model file (not a descriptor) and a script."""
        binds = list(self.ro_binds)
        if self.model is not None and not str(self.model).startswith("/proc/"):
            binds.append(str(self.model))
        if self.engine_module.endswith(".py"):
            binds.append(self.engine_module)
        return binds

    def command(self) -> list[str]:
        """The full argv: the sandbox's launch prefix, then the engine and its flags.

        Raises ``SandboxError`` (``sandbox.unavailable``) when this machine cannot enforce the
        profile: there is no fallback to a weaker one.
        """
        prefix: list[str] = []
        if self.sandbox is not None:
            from veil.sandbox import sandbox_prefix

            prefix = sandbox_prefix(
                self.sandbox,
                socket_dir=str(self._socket_path.parent),
                ro_binds=self._binds(),
                cgroups=self.cgroup.directories if self.cgroup else (),
            )
        argv = self._engine_argv()
        if not self.confined:  # inside a PID namespace our pid means nothing to the engine
            argv += ["--parent-pid", str(os.getpid())]
        return [*prefix, *argv, *self.extra_args]

    def log_text(self) -> str:
        """What is kept of the engine's output: fixed messages, or (unconfined) the raw tail."""
        return self._output.text() if self._output is not None else ""

    def _prepare(self, profile: SandboxProfile) -> None:
        """A fresh private socket directory and, where the host offers one, a cgroup."""
        from veil.sandbox.profile import SandboxError

        try:
            owner = None if profile.name == "gvisor" else engine_identity()  # gVisor's gofer: root
        except OSError as exc:
            raise SandboxError("sandbox.engine_uid", str(exc)) from None
        self.socket_dir_kind = socketdir.prepare(self._socket_path.parent, self._socket_path.name, owner)
        self._prepared = True
        # Under gVisor the cgroup also holds runsc, its gofer, the Sentry (many threads) and, on
        # the ptrace platform, stub processes for the engine's; the engine's own process count
        # is then its RLIMIT_NPROC inside gVisor, and the host ceiling a backstop above it.
        pids = profile.pids_max
        if profile.name == "gvisor":
            pids = GVISOR_STUBS * profile.pids_max + GVISOR_TASKS
        limits = cgroup.default_limits(profile.memory_max, pids, profile.cpus)
        try:
            self.cgroup, self.cgroup_unavailable = cgroup.create(limits), None
        except cgroup.CgroupUnavailable as exc:
            self.cgroup, self.cgroup_unavailable = None, str(exc)
            log.warning("engine runs without a cgroup (no memory, pids or CPU ceiling): %s", exc)

    def _release(self) -> None:
        """Kill what is left in the cgroup, remove it, and wipe the socket directory."""
        group, self.cgroup = self.cgroup, None
        if group is not None:
            group.remove()
        if self._prepared:
            self._prepared = False
            socketdir.clear(self._socket_path.parent)

    def _spawn(self) -> None:
        if self._proc is not None:
            raise RuntimeError("engine already started")
        if self.sandbox is not None:
            self._prepare(self.sandbox)
        try:
            command = self.command()
        except BaseException:
            self._release()
            raise
        read_end, write_end = os.pipe()
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL if self.stdin_fd is None else self.stdin_fd,
                stdout=write_end,
                stderr=write_end,
                env=self.env,
                pass_fds=self.pass_fds,  # a sealed memfd, say: the trampoline refuses writable ones
                start_new_session=True,  # so stop() can signal the wrapper and engine together
            )
        except BaseException:
            os.close(read_end)
            self._release()
            raise
        finally:
            os.close(write_end)
        self._output = EngineOutput(read_end, confined=self.confined)
        self._running_profile = self.sandbox

    def _failure(self, what: str) -> EngineStartError:
        assert self._output is not None
        kept = self._output.text()
        if self.confined:
            kept = kept or "(no output)"
            note = "its output is withheld (a confined engine is untrusted); kept:\n"
        else:
            kept, note = kept[-_TAIL:], "its output:\n"
        return EngineStartError("engine.start_failed", f"{what}; {note}{kept}")

    def _check_alive(self) -> None:
        assert self._proc is not None and self._output is not None
        if (rc := self._proc.poll()) is not None:
            self._output.wait(timeout=2.0)
            error = self._failure(f"engine exited with status {rc} before it was ready")
            self.stop()
            raise error

    def _timed_out(self) -> EngineStartError:
        self.stop()
        return self._failure(f"engine did not answer /health within {self.startup_timeout:.0f}s")

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

    def restart(self, sandbox: SandboxProfile | None) -> EngineProcess:
        """Stop the engine and start it again confined by ``sandbox``; block until it answers.

        If the new profile cannot be enforced here (``SandboxError``) or the engine does not come
        up (``EngineStartError``), the error propagates and *no* engine runs: the caller must not
        acknowledge the new profile, and must not keep serving under the old one either.
        """
        self.stop()
        self.sandbox = sandbox
        return self.start()

    async def arestart(self, sandbox: SandboxProfile | None) -> EngineProcess:
        """Like restart(), without blocking the event loop during the wait for /health."""
        self.stop()
        self.sandbox = sandbox
        return await self.astart()

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
        self._release()
        with contextlib.suppress(FileNotFoundError):
            if self._socket_path.is_socket():
                self._socket_path.unlink()
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
