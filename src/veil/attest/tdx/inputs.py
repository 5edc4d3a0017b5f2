"""Reading `veil evidence verify` inputs for TDX and Azure: absent or unreadable files are ParseErrors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from veil.errors import ParseError

MAX_INPUT = 16 << 20  # evidence and collateral are kilobytes; refuse to slurp huge files


def need(path: Path | None, flag: str) -> Path:
    """The path given for ``flag``, or a cli.missing_input refusal."""
    if path is None:
        raise ParseError("cli.missing_input", f"{flag} is required for this platform")
    return path


def read_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_INPUT:
            raise ParseError("cli.unreadable_input", f"{path} is too large")
        return path.read_bytes()
    except OSError as exc:
        raise ParseError("cli.unreadable_input", f"cannot read {path}: {exc}") from exc


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError("cli.unreadable_input", f"{path} is not JSON: {exc}") from exc


def read_binary_or_hex(path: Path) -> bytes:
    """Binary evidence, also accepted as a hex text file (as some tools write quotes)."""
    data = read_bytes(path)
    text = data.strip()
    if text and len(text) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text.decode())
    return data
