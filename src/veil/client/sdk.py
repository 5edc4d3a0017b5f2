"""`veil.Client`: verify the deployment, then use the OpenAI API through end-to-end encryption.

The client is the official ``openai`` SDK with an OHTTP transport underneath: every request is
encrypted to a key configuration the coordinator's *current* attestation vouches for, so nothing
leaves this process in the clear. ``client.chat.completions.create(...)`` works as with OpenAI.

Both clients stay fresh (``veil.client.freshness``): they re-verify every ``reverify_seconds`` and
when the gateway refuses a request, and once the deployment stops verifying every request raises
that refusal (a ``VeilError`` with its reason code) instead of being sent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import openai

from veil.client.freshness import DEFAULT_INTERVAL, AsyncReverifier, Reverifier
from veil.client.manifest_log import ManifestLog
from veil.client.policy import ClientPolicy, load_with_log
from veil.client.transport import AsyncOhttpTransport, OhttpTransport
from veil.client.verify import AttestedCoordinator
from veil.errors import VeilError

PolicyArg = ClientPolicy | Path | str | None
NO_TENANT_KEY = "veil-no-tenant-key"  # the openai SDK insists on a key; deployments without tenants ignore it


def _policy_and_log(policy: PolicyArg) -> tuple[ClientPolicy, ManifestLog | None]:
    if isinstance(policy, ClientPolicy):
        return policy, None
    return load_with_log(Path(policy) if policy else None)


def _tenant_key(api_key: str | None) -> str:
    """The tenant key (if the deployment has tenants) travels only inside the encryption."""
    return api_key or os.environ.get("VEIL_API_KEY") or NO_TENANT_KEY


class _Resources:
    """The OpenAI resources both clients expose."""

    def _expose(self, sdk: openai.OpenAI | openai.AsyncOpenAI) -> None:
        self._openai = sdk
        self.chat = sdk.chat
        self.completions = sdk.completions
        self.embeddings = sdk.embeddings
        self.models = sdk.models
        self.responses = sdk.responses


class Client(_Resources):
    """Verified, encrypted OpenAI-style client for a Veil deployment.

    Verifies in the constructor (raising a ``VeilError`` when the deployment does not verify).
    ``api_key``: the tenant key when the deployment has tenants (default $VEIL_API_KEY).
    """

    def __init__(
        self,
        policy: PolicyArg = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        reverify_seconds: float = DEFAULT_INTERVAL,
        **openai_kwargs: Any,
    ) -> None:
        policy, log = _policy_and_log(policy)
        self.policy = policy
        self.verifier = Reverifier(policy, manifest_log=log, interval=reverify_seconds)
        self.verifier.verify()
        transport = OhttpTransport(self.verifier, policy.relay_url or policy.gateway_url)
        self._bridge = (transport, _tenant_key(api_key), timeout)
        self._expose(
            openai.OpenAI(
                base_url=f"{policy.gateway_url}/v1",
                api_key=_tenant_key(api_key),
                max_retries=0,
                http_client=httpx.Client(transport=transport, timeout=timeout),  # type: ignore[arg-type]
                **openai_kwargs,
            )
        )

    def anthropic(self, **anthropic_kwargs: Any) -> Any:
        """Anthropic's own SDK (``anthropic.Anthropic``, needs the ``anthropic`` package) over this
        client's verified, encrypted transport: ``client.anthropic().messages.create(...)``."""
        from veil.client.anthropic_bridge import sync_client

        transport, tenant, timeout = self._bridge
        return sync_client(transport, self.policy.gateway_url, tenant, timeout, **anthropic_kwargs)

    @property
    def attestation(self) -> AttestedCoordinator:
        """The current verification (re-verified first when due; raises once it fails)."""
        return self.verifier.current()

    @property
    def simulated(self) -> bool:
        return self.attestation.simulated

    def close(self) -> None:
        self._openai.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Resources):
    """The asyncio twin of :class:`Client`: ``await client.chat.completions.create(...)``.

    The constructor does no I/O; the deployment is verified by ``await client.verify()``, on
    ``async with``, or before the first request, without blocking the event loop.
    """

    def __init__(
        self,
        policy: PolicyArg = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        reverify_seconds: float = DEFAULT_INTERVAL,
        **openai_kwargs: Any,
    ) -> None:
        policy, log = _policy_and_log(policy)
        self.policy = policy
        self.verifier = AsyncReverifier(policy, manifest_log=log, interval=reverify_seconds)
        transport = AsyncOhttpTransport(self.verifier, policy.relay_url or policy.gateway_url)
        self._bridge = (transport, _tenant_key(api_key), timeout)
        self._expose(
            openai.AsyncOpenAI(
                base_url=f"{policy.gateway_url}/v1",
                api_key=_tenant_key(api_key),
                max_retries=0,
                http_client=httpx.AsyncClient(transport=transport, timeout=timeout),  # type: ignore[arg-type]
                **openai_kwargs,
            )
        )

    async def verify(self) -> AttestedCoordinator:
        """Verify now (raises a ``VeilError`` when the deployment does not verify)."""
        return await self.verifier.verify()

    def anthropic(self, **anthropic_kwargs: Any) -> Any:
        """``anthropic.AsyncAnthropic`` over this client's verified, encrypted transport."""
        from veil.client.anthropic_bridge import async_client

        transport, tenant, timeout = self._bridge
        return async_client(transport, self.policy.gateway_url, tenant, timeout, **anthropic_kwargs)

    @property
    def attestation(self) -> AttestedCoordinator:
        """The latest verification (no I/O); raises its refusal, or ``client.not_verified`` before the first."""
        if self.verifier.refusal is not None:
            raise self.verifier.refusal
        if self.verifier.latest is None:
            raise VeilError("client.not_verified", "await client.verify() (or use `async with`) first")
        return self.verifier.latest

    @property
    def simulated(self) -> bool:
        return self.attestation.simulated

    async def close(self) -> None:
        await self._openai.close()  # type: ignore[misc]

    async def __aenter__(self) -> AsyncClient:
        await self.verify()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
