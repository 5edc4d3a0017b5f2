"""The client's local log of manifests it has seen, per coordinator.

A coordinator could show one client an old manifest (rollback) or a different branch of history
(fork). The client remembers the chain of digests it has accepted and only moves forward along
a history that extends it; both attacks are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx

from veil import wire
from veil.errors import PolicyError
from veil.manifest import SignedManifest, verify_history

LOG_FILE = "manifest-log.json"


class ManifestLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def seen(self, coordinator_url: str) -> list[str]:
        return self._read().get(coordinator_url, [])

    def _write(self, coordinator_url: str, chain: list[str]) -> None:
        data = self._read()
        data[coordinator_url] = chain
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)

    def advance(self, coordinator_url: str, attested: SignedManifest, http: httpx.Client | None = None) -> None:
        """Accept ``attested`` only if it is our head or a verified extension of our chain."""
        known = self.seen(coordinator_url)
        head = attested.digest.hex()
        if known and head == known[-1]:
            return
        if head in known:
            raise PolicyError("manifest.rollback", "the coordinator shows an older manifest than one already seen")
        client = http or httpx.Client(timeout=10)
        try:
            resp = client.get(f"{coordinator_url}{wire.MANIFEST_HISTORY_PATH}")
            resp.raise_for_status()
            history = [SignedManifest.parse(e) for e in resp.json()]
        finally:
            if http is None:
                client.close()
        verify_history(history)
        chain = [e.digest.hex() for e in history]
        if not chain or chain[-1] != head:
            raise PolicyError("manifest.fork", "the served history does not end in the attested manifest")
        if chain[: len(known)] != known:
            raise PolicyError("manifest.fork", "the served history forks from the manifests already seen")
        self._write(coordinator_url, chain)
