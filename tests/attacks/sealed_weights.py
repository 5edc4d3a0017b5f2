"""Shared by the sealed-weights attack tests: a model sealed into 4 KiB segments, and the worker's
own loader (veil.worker.serve.load_weights) pointed at a file the attacker wrote."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from veil.errors import VeilError
from veil.manifest import ModelEntry
from veil.sealing import SealedHeader, generate_data_key, seal_file
from veil.sealing.format import TAG_SIZE, TINK_HEADER_SIZE
from veil.worker.serve import load_weights

SEG = 4096
FIRST, FULL = SEG - TINK_HEADER_SIZE - TAG_SIZE, SEG - TAG_SIZE
SIZE = FIRST + 6 * FULL + 999  # eight segments, the last one short


class Model:
    """Genuine weights, sealed by the admin, pinned in the manifest the worker was admitted under."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.key = tmp, generate_data_key()
        self.plaintext = os.urandom(SIZE)
        (tmp / "model.bin").write_bytes(self.plaintext)
        self.header: SealedHeader = seal_file(tmp / "model.bin", tmp / "model.sealed", self.key, "model-key", segment_size=SEG)
        self.entry = ModelEntry(
            name="m",
            sha256=self.header.plaintext_sha256,
            source=str(tmp / "served.sealed"),
            sealed_sha256=self.header.sealed_sha256,
            tree_sha256=self.header.tree_sha256,
            key_id="model-key",
        )

    def segments(self) -> list[bytes]:
        """The plaintext cut as the sealed format cuts it."""
        p = self.plaintext
        return [p[:FIRST]] + [p[o : o + FULL] for o in range(FIRST, len(p), FULL)]

    def load(self, served: bytes, entry: ModelEntry | None = None) -> VeilError:
        """The worker loads ``served`` as the model's source; returns its refusal (none is a failure)."""
        (self.tmp / "served.sealed").write_bytes(served)
        before = {
            os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")
        }
        threads = threading.active_count()
        secrets = SimpleNamespace(data_keys={"model-key": self.key.hex()})
        with pytest.raises(VeilError) as err:
            load_weights(entry or self.entry, secrets, SimpleNamespace(model_path=None))  # type: ignore[arg-type]
        after = {
            os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}")
        }
        assert not any("memfd:" in fd for fd in after - before), "a refused unseal left plaintext in an open memfd"
        assert threading.active_count() == threads, "a refused unseal left a worker thread running"
        return err.value

    def loads(self, served: bytes) -> bytes:
        """The worker accepts ``served``; returns the weights the engine would get."""
        (self.tmp / "served.sealed").write_bytes(served)
        secrets = SimpleNamespace(data_keys={"model-key": self.key.hex()})
        weights = load_weights(self.entry, secrets, SimpleNamespace(model_path=None))  # type: ignore[arg-type]
        try:
            return os.pread(weights.stdin_fd or -1, SIZE + 1, 0)
        finally:
            weights.close()
