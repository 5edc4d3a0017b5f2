"""What the worker keeps of an engine's stdout and stderr: fixed messages, never the text.

A confined engine is untrusted AI code that sees prompts and plaintext weights. Whatever it prints
would become a covert store if the worker wrote it to a log file (the host owns the disk). So its
stdio goes to a pipe that a worker thread drains for as long as the engine lives (an engine
blocked on a full pipe could not serve), and each line is *reduced*: a line that starts with one of
the known prefixes becomes that prefix's fixed message, every other line is dropped. Each fixed
message is kept once, so a hostile engine can signal at most which of these few messages it
printed (a handful of bits per start), never content.

An unconfined engine (no sandbox: tests, benches, or the development profile "none") can write
anywhere anyway, so for those the last MiB of raw output is kept, in memory only, to explain a
failed start and for tests that check the engine's own log hygiene.
"""

from __future__ import annotations

import os
import threading
from collections import deque

# Prefix of a line -> the fixed message kept for it. Order matters: the first match wins.
FIXED_MESSAGES: tuple[tuple[str, str], ...] = (
    ("veil-engine: serving ", "engine: serving"),
    ("veil-engine: parent exited", "engine: parent exited before start-up"),
    ("veil-engine: request ended", "engine: a request ended with an error"),
    ("veil-engine: ", "engine: a message (text withheld)"),
    ("veil.sandbox.landlock: ", "sandbox: Landlock refused to confine the engine (text withheld)"),
    ("veil.sandbox", "sandbox: the launcher refused to start the engine (text withheld)"),
    ("bwrap: ", "sandbox: bubblewrap reported an error (text withheld)"),
)
OTHER = "engine: other output (withheld: a confined engine is untrusted)"
MAX_LINE = 4096  # longer lines are dropped unread; they can only be content
RAW_TAIL = 1 << 20  # bytes of raw output kept (in memory) for unconfined engines
_READ = 64 * 1024


def reduce_line(line: bytes) -> str:
    """The fixed message a line of engine output is reduced to."""
    text = line.decode("utf-8", "replace")
    for prefix, message in FIXED_MESSAGES:
        if text.startswith(prefix):
            return message
    return OTHER


class EngineOutput:
    """Drains one pipe on a daemon thread until EOF; bounded memory whatever the engine writes."""

    def __init__(self, fd: int, *, confined: bool) -> None:
        self.confined = confined
        self._fd = fd
        self._messages: dict[str, None] = {}  # insertion-ordered set of fixed messages
        self._raw: deque[bytes] = deque()
        self._raw_size = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name="veil-engine-output", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        pending = b""
        skipping = False  # inside an over-long line: drop until its newline
        try:
            while chunk := os.read(self._fd, _READ):
                if not self.confined:
                    self._keep_raw(chunk)
                    continue
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if not skipping:
                        self._note(reduce_line(line))
                    skipping = False
                if len(pending) > MAX_LINE:
                    if not skipping:
                        self._note(OTHER)
                    pending, skipping = b"", True
            if pending and not skipping and self.confined:
                self._note(reduce_line(pending))
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def _note(self, message: str) -> None:
        with self._lock:
            self._messages.setdefault(message)

    def _keep_raw(self, chunk: bytes) -> None:
        with self._lock:
            self._raw.append(chunk)
            self._raw_size += len(chunk)
            while self._raw_size - len(self._raw[0]) >= RAW_TAIL:
                self._raw_size -= len(self._raw.popleft())

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the engine (and everything it forked) closed the pipe."""
        self._thread.join(timeout)

    def text(self) -> str:
        """The fixed messages (confined) or the raw tail (unconfined), one per line."""
        with self._lock:
            if self.confined:
                return "\n".join(self._messages)
            return b"".join(self._raw)[-RAW_TAIL:].decode("utf-8", "replace")
