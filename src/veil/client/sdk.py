"""`veil.Client`: verify the deployment, then use the OpenAI API through end-to-end encryption.

The client is the official ``openai`` SDK with an OHTTP transport underneath: every request is
encrypted to the key configuration the coordinator's attestation vouched for, so nothing leaves
this process in the clear. ``client.chat.completions.create(...)`` works as with OpenAI.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import openai

from veil.client.policy import ClientPolicy, load_with_log
from veil.client.transport import OhttpTransport
from veil.client.verify import AttestedCoordinator, verify_coordinator


class Client:
    """Verified, encrypted OpenAI-style client for a Veil deployment."""

    def __init__(
        self,
        policy: ClientPolicy | Path | str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        **openai_kwargs: Any,
    ) -> None:
        """``api_key``: the tenant key when the deployment has tenants (default $VEIL_API_KEY).
        It travels only inside the encryption, as the inner request's Authorization header."""
        log = None
        if not isinstance(policy, ClientPolicy):
            policy, log = load_with_log(Path(policy) if policy else None)
        self.policy = policy
        self.attestation: AttestedCoordinator = verify_coordinator(policy, manifest_log=log)
        transport = OhttpTransport(self.attestation.key_configs[0], policy.gateway_url)
        self._http = httpx.Client(transport=transport, timeout=timeout)
        self._openai = openai.OpenAI(
            base_url=f"{policy.gateway_url}/v1",
            api_key=api_key or os.environ.get("VEIL_API_KEY") or "veil-no-tenant-key",
            http_client=self._http,
            max_retries=0,
            **openai_kwargs,
        )
        self.chat = self._openai.chat
        self.completions = self._openai.completions
        self.embeddings = self._openai.embeddings
        self.models = self._openai.models

    @property
    def simulated(self) -> bool:
        return self.attestation.simulated

    def close(self) -> None:
        self._openai.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of :class:`Client`: ``await client.chat.completions.create(...)``.

    Verification happens once, in the constructor (a few milliseconds); requests are async.
    """

    def __init__(
        self,
        policy: ClientPolicy | Path | str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        **openai_kwargs: Any,
    ) -> None:
        log = None
        if not isinstance(policy, ClientPolicy):
            policy, log = load_with_log(Path(policy) if policy else None)
        self.policy = policy
        self.attestation: AttestedCoordinator = verify_coordinator(policy, manifest_log=log)
        transport = OhttpTransport(self.attestation.key_configs[0], policy.gateway_url)
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout)
        self._openai = openai.AsyncOpenAI(
            base_url=f"{policy.gateway_url}/v1",
            api_key=api_key or os.environ.get("VEIL_API_KEY") or "veil-no-tenant-key",
            http_client=self._http,
            max_retries=0,
            **openai_kwargs,
        )
        self.chat = self._openai.chat
        self.completions = self._openai.completions
        self.embeddings = self._openai.embeddings
        self.models = self._openai.models

    @property
    def simulated(self) -> bool:
        return self.attestation.simulated

    async def close(self) -> None:
        await self._openai.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
