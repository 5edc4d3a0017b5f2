"""Client attestation at scale: one hardware report for every client that asked meanwhile.

The security processor makes one report at a time, in milliseconds (SEV-SNP) or tens of them (a
TDX quote through the quoting enclave). One report per client would queue a thousand clients for
seconds. The batcher keeps at most one report in flight: the nonces that arrive while it is being
made wait, and the next report covers all of them at once through the root of a Merkle tree over
their nonces (veil.attest.nonce_tree); each client receives the shared evidence and its own
inclusion path. Before each report the batcher waits a couple of milliseconds for more nonces
(``window_s``): a lone client pays that once, a crowd shares the report; under load a batch is
whatever arrived during the previous report and the window, so set-ups per second follow the
clients, not the chip.

``batching=False`` is the one-report-per-client path (report_data binds the nonce directly),
still serialised like the hardware; it is what the attestation bench compares against.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veil.attest.attester import Attester
from veil.attest.binding import coordinator_batch_report_data, coordinator_report_data
from veil.attest.nonce_tree import MAX_BATCH, InclusionProof, NonceTree


COLLECT_WINDOW_S = 0.002  # a lone client waits this much longer; a crowd shares one report


@dataclass(frozen=True)
class Bound:
    """What one report binds besides the nonces: the coordinator's key and state identity, its
    manifest and key config."""

    public_key: bytes
    identity: bytes  # empty while locked
    manifest: Any  # SignedManifest | None
    key_configs: bytes

    @property
    def manifest_digest(self) -> bytes:
        return self.manifest.digest if self.manifest is not None else b""


@dataclass(frozen=True)
class Attested:
    """One client's answer: ``shared`` is the JSON object every client of the report receives
    (evidence, key, key configuration, manifest), encoded once per report in its thread; the
    client's own inclusion proof goes beside it."""

    shared: bytes
    proof: InclusionProof | None  # None: report_data binds this client's nonce directly

    def body(self, **extra: Any) -> bytes:
        """The whole JSON answer: the shared object with ``extra`` and the proof added."""
        if self.proof is not None:
            extra["nonce_batch"] = self.proof.to_json()
        return self.shared[:-1] + b", " + json.dumps(extra).encode()[1:] if extra else self.shared


class AttestationBatcher:
    """``await attest(nonce)``: evidence bound (directly or through a batch root) to ``nonce``.

    ``current`` returns what the report must bind right now; it runs once per report, in the
    report's worker thread (it may read the database), never on the event loop.
    """

    def __init__(
        self,
        attester: Attester,
        current: Callable[[], Bound],
        *,
        batching: bool = True,
        max_batch: int = MAX_BATCH,
        window_s: float = COLLECT_WINDOW_S,
    ) -> None:
        self._attester, self._current = attester, current
        self.batching, self.max_batch, self.window_s = batching, max_batch, window_s
        self._pending: list[tuple[bytes, asyncio.Future[Attested]]] = []
        self._running: asyncio.Task[None] | None = None
        self._serial = asyncio.Lock()  # unbatched: one report at a time, as the hardware does
        self.reports = 0  # reports made (for metrics and the bench)

    async def attest(self, nonce: bytes) -> Attested:
        if not self.batching:
            async with self._serial:
                self.reports += 1
                return await asyncio.to_thread(self._single, nonce)
        future: asyncio.Future[Attested] = asyncio.get_running_loop().create_future()
        self._pending.append((nonce, future))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        return await future

    def _single(self, nonce: bytes) -> Attested:
        bound = self._current()
        report_data = coordinator_report_data(
            nonce, bound.public_key, bound.identity, bound.manifest_digest, hashlib.sha256(bound.key_configs).digest()
        )
        return Attested(self._encode(self._attester.evidence(report_data), bound), None)

    def _encode(self, evidence: dict[str, Any], bound: Bound) -> bytes:
        return json.dumps(
            {
                "platform": self._attester.platform,
                "evidence": evidence,
                "public_key": bound.public_key.hex(),
                "identity": bound.identity.hex(),
                "key_configs": base64.b64encode(bound.key_configs).decode(),
                "manifest": bound.manifest.model_dump(mode="json") if bound.manifest is not None else None,
                "manifest_digest": bound.manifest_digest.hex(),
            }
        ).encode()

    async def _drain(self) -> None:
        """Report after report while nonces wait; each report takes all (up to max_batch) of them."""
        while self._pending:
            await asyncio.sleep(self.window_s)  # the nonces of the next few milliseconds join too
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                shared, tree = await asyncio.to_thread(self._batch_report, [n for n, _ in batch])
            except BaseException as exc:  # the chip refused: every waiting client hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            self.reports += 1
            for index, (_, future) in enumerate(batch):
                if not future.done():  # a client that went away is simply skipped
                    future.set_result(Attested(shared, tree.proof(index)))

    def _batch_report(self, nonces: list[bytes]) -> tuple[bytes, NonceTree]:
        tree = NonceTree(nonces)
        bound = self._current()
        report_data = coordinator_batch_report_data(
            tree.root, bound.public_key, bound.identity, bound.manifest_digest, hashlib.sha256(bound.key_configs).digest()
        )
        return self._encode(self._attester.evidence(report_data), bound), tree
