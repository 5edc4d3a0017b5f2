"""The client's local log of manifests it has seen, per coordinator.

A coordinator could show one client an old manifest (rollback) or a different branch of history
(fork). The client remembers the chain of digests it has accepted and only moves forward along
a history that extends it; both attacks are refused.

No I/O beyond the log file: :meth:`ManifestLog.needs_history` says whether the served history must
be fetched, and :meth:`ManifestLog.extend` checks it (``veil.client.verify`` fetches it, capped).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from veil.errors import ParseError, PolicyError
from veil.manifest import SignedManifest, verify_history

LOG_FILE = "manifest-log.json"


class ManifestLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, list[str]]:
        try:
            seen: dict[str, list[str]] = json.loads(self.path.read_text())
            return seen
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

    def needs_history(self, coordinator_url: str, attested: SignedManifest) -> bool:
        """False when ``attested`` is our head; True when the history must be checked; raises on rollback."""
        known = self.seen(coordinator_url)
        head = attested.digest.hex()
        if known and head == known[-1]:
            return False
        if head in known:
            raise PolicyError("manifest.rollback", "the coordinator shows an older manifest than one already seen")
        return True

    def extend(self, coordinator_url: str, attested: SignedManifest, served: Any) -> None:
        """Accept ``attested`` only if the served history verifies, ends in it and extends our chain."""
        if not isinstance(served, list):
            raise ParseError("manifest.malformed", "the manifest history is not a list")
        history = [SignedManifest.parse(e) for e in served]
        verify_history(history)
        chain = [e.digest.hex() for e in history]
        known = self.seen(coordinator_url)
        if not chain or chain[-1] != attested.digest.hex():
            raise PolicyError("manifest.fork", "the served history does not end in the attested manifest")
        if chain[: len(known)] != known:
            raise PolicyError("manifest.fork", "the served history forks from the manifests already seen")
        self._write(coordinator_url, chain)
