"""Process plumbing every Veil engine shares: die with the parent, serve only on a private UDS.

An engine holds plaintext prompts and weights, so it must never outlive the gateway that owns it
(an orphan would keep a decrypted model in memory) and must never answer anyone but that gateway
(the socket is created owner-only before it listens, not chmod-ed after).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from veil.process import die_with_parent, parent_already_gone
from veil.sandbox.hardening import forbid_core_dumps


def bind_unix_socket(path: str | Path, mode: int = 0o600) -> socket.socket:
    """Bind and return a listening-ready AF_UNIX socket that is never wider than ``mode``.

    The umask is tightened around bind() so there is no window in which another user could connect.
    A stale socket file left by a dead engine is replaced; any other existing file is refused.

    Under gVisor (``runsc --host-uds=create``) the socket is created on the host by runsc's gofer,
    and runsc then refuses ``stat``, ``chmod`` and ``unlink`` on it with EPERM. Those refusals are
    tolerated: the guards that matter do not depend on them. (1) The umask set around ``bind()``
    is what gives the socket its mode at creation: the gofer honours it, and the host sees
    ``srw-------`` for the default mode (asserted by tests/system/test_sandbox_gvisor_engine.py); the
    ``chmod`` after it is only belt and braces (e.g. where a default ACL overrides the umask).
    (2) The socket directory is private: the worker creates its run directory with mode 0700
    (``veil.worker.serve``; tests use ``mkdtemp``, also 0700), so no other user can even reach
    the socket, and the sandbox binds only that directory writable.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        # gVisor: a host-backed socket we may not stat (nor unlink); bind() reports EADDRINUSE.
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, mode)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            sock.close()
            raise
        # gVisor refuses chmod on a host-backed socket; the umask above already set ``mode``.
    sock.listen(128)
    return sock


def remove_socket(path: str | Path) -> None:
    """Best-effort removal of the socket file on shutdown.

    Under gVisor the host-backed socket cannot be unlinked from inside (EPERM); the sandbox
    launcher removes it from the host side when the engine exits.
    """
    with contextlib.suppress(FileNotFoundError, PermissionError):
        Path(path).unlink()


def log(msg: str) -> None:
    """An engine's only logger: fixed operational lines, never request or response content."""
    print(f"veil-engine: {msg}", file=sys.stderr, flush=True)


def start_up(parent_pid: int | None) -> None:
    """Die with the gateway; exit at once if it is already gone; never dump core (prompts and
    weights are in this memory; exec made the process dumpable again)."""
    die_with_parent()
    forbid_core_dumps()
    if parent_already_gone(parent_pid):
        log("parent exited before start-up; exiting")
        sys.exit(1)


class SwallowErrors:
    """Outermost ASGI layer: Starlette re-raises handled 500s so servers can log them; we don't.

    Uvicorn would print the traceback, and exception text can carry request content.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except (Exception, asyncio.CancelledError) as exc:  # cancelled: shutdown grace expired
            log(f"request ended: {type(exc).__name__}")


def _ignore_signal(signum: int, _frame: object) -> None:
    """Uvicorn re-raises the stop signal after its graceful shutdown; let run() return instead."""


class NoTracebacks(logging.Filter):
    """Strip exception details from server log records: exception text can quote a request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            kind = record.exc_info[0].__name__ if record.exc_info[0] else "error"
            record.msg = f"{record.getMessage()} ({kind})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_server_logs() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio"):
        logger = logging.getLogger(name)
        logger.addFilter(NoTracebacks())
        for handler in logger.handlers:
            handler.addFilter(NoTracebacks())


def serve(app: Any, socket_path: Path, socket_mode: int, banner: str) -> None:
    """Listen on an owner-only socket until SIGTERM, then exit without waiting on model threads.

    Every engine shares this log hygiene (no tracebacks, no access log), so each leaks equally
    little.
    """
    import uvicorn

    sock = bind_unix_socket(socket_path, socket_mode)
    config = uvicorn.Config(
        SwallowErrors(app), access_log=False, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
    )
    # Uvicorn stops gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler that was
    # installed before it: make that a no-op so we reach our cleanup instead of dying mid-way.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore_signal)
    log(banner)
    server = uvicorn.Server(config)
    config.load()
    quiet_server_logs()
    status = 0
    try:
        server.run(sockets=[sock])
    except BaseException as exc:  # no traceback: its text could carry request content
        log(f"server failed: {type(exc).__name__}")
        status = 1
    finally:
        remove_socket(socket_path)
        log("stopped")
        sys.stderr.flush()
        os._exit(status)
