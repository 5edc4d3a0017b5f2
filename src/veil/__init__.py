"""Veil: confidential AI inference with attested, end-to-end encrypted requests."""

__version__ = "0.1.0"

__all__ = ["__version__", "Client", "AsyncClient"]


def __getattr__(name: str):  # lazy: importing veil must stay cheap for the CLI
    if name in ("Client", "AsyncClient"):
        from veil.client import sdk

        return getattr(sdk, name)
    raise AttributeError(name)
