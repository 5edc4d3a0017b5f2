"""Engines: separate processes that serve the OpenAI API on a Unix socket to the worker's gateway.

``launcher`` starts and stops them (optionally behind a sandbox wrapper) and gives the gateway an
httpx client; ``llamacpp`` is the embedded CPU engine; ``models`` finds the default model.
Importing this package stays cheap: the model runtime loads only inside the engine process.
"""

from veil.engines.launcher import EngineProcess, EngineStartError, engine_client
from veil.engines.models import DEFAULT_MODEL_ID, default_model_path, sha256_file

__all__ = [
    "DEFAULT_MODEL_ID",
    "EngineProcess",
    "EngineStartError",
    "default_model_path",
    "engine_client",
    "sha256_file",
]
