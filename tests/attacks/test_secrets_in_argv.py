"""Attack: read prompts and API keys from other processes' command lines.

The attacker is another local user (or any process on the client machine): ``/proc/*/cmdline``
is world-readable, so whatever a user passes as an argument is visible to everyone. Before the
fix ``veil chat`` took the tenant key as ``--api-key`` and the prompt only as an argument.

Refused with: ``veil chat`` reads the prompt from stdin (``-``) and the key from
``--api-key-file`` or ``$VEIL_API_KEY`` (``--api-key`` no longer exists: exit 2); ``veil proxy``
takes its tenant key and token from files or the environment. During real runs of both, no
process's command line holds the prompt, the tenant key or the proxy token — yet the gateway
accepted the key (the answers arrive).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from attacks.client_stack import MODEL, client_stack
from veil.manifest import TenantEntry
from veil.testing import free_port

pytestmark = pytest.mark.slow  # live servers and processes on loopback

KEY = f"veil-{secrets.token_urlsafe(32)}"
TOKEN = secrets.token_urlsafe(16)
CANARY = f"CANARY-{uuid.uuid4().hex}"


class CmdlineWatch:
    """Reads every process's /proc/PID/cmdline, over and over, until stopped."""

    def __init__(self, needles: list[str]) -> None:
        self.needles = [n.encode() for n in needles]
        self.hits: list[str] = []
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                self.seen.add(cmdline)
                self.hits += [cmdline.decode(errors="replace") for n in self.needles if n in cmdline]
            time.sleep(0.005)

    def __enter__(self) -> "CmdlineWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def saw(self, *words: str) -> bool:
        return any(all(w.encode() in c for w in words) for c in self.seen)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[SimpleNamespace]:
    tenant = TenantEntry(id="acme", key_sha256=hashlib.sha256(KEY.encode()).hexdigest(), requests_per_minute=100)
    with client_stack(tenants=[tenant]) as stack:
        stack.update(tenants=[tenant])
        d = tmp_path_factory.mktemp("client")
        stack.policy(pinned=False).save(d / "client-policy.json")
        (d / "api-key").write_text(KEY + "\n")
        (d / "proxy-token").write_text(TOKEN + "\n")
        os.chmod(d / "api-key", 0o600)
        env = {k: v for k, v in os.environ.items() if k != "VEIL_API_KEY"}
        yield SimpleNamespace(dir=d, env={**env, "VEIL_STATE_DIR": str(d)}, engine=stack.engine)


def _chat(deployment: SimpleNamespace, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "veil", "chat", "-", "--no-stream", "--quiet", *args],
        input=f"Repeat after me: {CANARY}",
        env=env or deployment.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_chat_keeps_prompt_and_key_out_of_argv(deployment: SimpleNamespace) -> None:
    before = deployment.engine.requests
    with CmdlineWatch([CANARY, KEY]) as watch:
        from_file = _chat(deployment, "--api-key-file", str(deployment.dir / "api-key"))
        from_env = _chat(deployment, env={**deployment.env, "VEIL_API_KEY": KEY})
    assert from_file.returncode == 0, from_file.stderr
    assert from_env.returncode == 0, from_env.stderr
    assert "hello from the engine" in from_file.stdout
    assert deployment.engine.requests == before + 2  # the gateway accepted the key both times
    assert watch.saw("veil", "chat", "--api-key-file")  # the watcher did see the runs
    assert watch.hits == []
    without = _chat(deployment)  # and the tenant key really is required
    assert without.returncode == 1 and "401" in without.stderr


def test_chat_has_no_api_key_option(deployment: SimpleNamespace) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "veil", "chat", "--api-key", KEY, "hi"],
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "No such option" in out.stderr


def test_proxy_takes_its_secrets_from_files(deployment: SimpleNamespace) -> None:
    port = free_port()
    with CmdlineWatch([CANARY, KEY, TOKEN]) as watch:
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil",
                "proxy",
                "--port",
                str(port),
                "--api-key-file",
                str(deployment.dir / "api-key"),
                "--token-file",
                str(deployment.dir / "proxy-token"),
            ],
            env=deployment.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body = {"model": MODEL, "messages": [{"role": "user", "content": CANARY}]}
            deadline = time.monotonic() + 60
            while True:
                try:
                    resp = httpx.post(url, json=body, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proxy.poll() is None, proxy.communicate()
                    time.sleep(0.2)
        finally:
            proxy.terminate()
            proxy.wait(10)
    assert resp.status_code == 200, resp.text
    assert watch.saw("veil", "proxy", "--api-key-file")
    assert watch.hits == []
