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


PolicyArg = ClientPolicy | Path | str | None


class _Verified:
    """What both clients share: verify first, then expose the OpenAI resources over OHTTP."""

    _openai: openai.OpenAI | openai.AsyncOpenAI

    def _connect(self, policy: PolicyArg, api_key: str | None, http: type[httpx.Client] | type[httpx.AsyncClient],
                 sdk: type[openai.OpenAI] | type[openai.AsyncOpenAI], timeout: float, openai_kwargs: dict[str, Any]) -> None:
        log = None
        if not isinstance(policy, ClientPolicy):
            policy, log = load_with_log(Path(policy) if policy else None)
        self.policy = policy
        self.attestation: AttestedCoordinator = verify_coordinator(policy, manifest_log=log)
        transport = OhttpTransport(self.attestation.key_configs[0], self.attestation.send_url)
        self._openai = sdk(
            base_url=f"{policy.gateway_url}/v1",
            # the tenant key (if the deployment has tenants) travels only inside the encryption
            api_key=api_key or os.environ.get("VEIL_API_KEY") or "veil-no-tenant-key",
            http_client=http(transport=transport, timeout=timeout),  # type: ignore[arg-type]
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


class Client(_Verified):
    """Verified, encrypted OpenAI-style client for a Veil deployment.

    ``api_key``: the tenant key when the deployment has tenants (default $VEIL_API_KEY).
    """

    def __init__(self, policy: PolicyArg = None, *, api_key: str | None = None, timeout: float = 120.0,
                 **openai_kwargs: Any) -> None:
        self._connect(policy, api_key, httpx.Client, openai.OpenAI, timeout, openai_kwargs)

    def close(self) -> None:
        self._openai.close()  # type: ignore[unused-coroutine]

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Verified):
    """The asyncio twin of :class:`Client`: ``await client.chat.completions.create(...)``.

    Verification happens once, in the constructor (a few milliseconds); requests are async.
    """

    def __init__(self, policy: PolicyArg = None, *, api_key: str | None = None, timeout: float = 120.0,
                 **openai_kwargs: Any) -> None:
        self._connect(policy, api_key, httpx.AsyncClient, openai.AsyncOpenAI, timeout, openai_kwargs)

    async def close(self) -> None:
        await self._openai.close()  # type: ignore[misc]

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
