"""Veil: confidential AI inference with attested, end-to-end encrypted requests."""

__version__ = "0.1.0"

__all__ = ["__version__", "Client"]


def __getattr__(name: str):  # lazy: importing veil must stay cheap for the CLI
    if name == "Client":
        from veil.client.sdk import Client

        return Client
    raise AttributeError(name)
