"""Get a TDX quote on a live TD through the kernel's configfs-tsm interface.

Protocol (Documentation/ABI/testing/configfs-tsm): make a directory under ``<root>/report``, write
64 bytes of report data to ``inblob``, read the quote from ``outblob``; ``provider`` names the
backend (``tdx_guest``) and ``generation`` counts writes, so a changed generation between our write
and our read means another process raced us. The root is injectable so tests run on a fake tree.
Not yet run on real TDX hardware.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from veil.errors import VeilError

TSM_ROOT = Path("/sys/kernel/config/tsm")
TDX_PROVIDER = "tdx_guest"


@dataclass(frozen=True)
class CollectedQuote:
    quote: bytes
    provider: str
    generation: int


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise VeilError("tdx.collect_failed", f"cannot read {path}: {exc}") from exc


def collect_quote(
    report_data: bytes, *, root: Path = TSM_ROOT, name: str | None = None
) -> CollectedQuote:
    """Ask the TDX module (through configfs-tsm) for a quote binding ``report_data``."""
    if len(report_data) != 64:
        raise VeilError("tdx.collect_failed", "report_data must be exactly 64 bytes")
    reports = root / "report"
    if not reports.is_dir():
        raise VeilError("tdx.collect_unavailable", f"{reports} missing: no configfs-tsm here")
    entry = reports / (name or f"veil-{secrets.token_hex(8)}")
    try:
        entry.mkdir(exist_ok=name is not None)
        provider = _read_text(entry / "provider")
        if provider != TDX_PROVIDER:
            raise VeilError("tdx.collect_wrong_provider", f"provider is {provider!r}, not TDX")
        (entry / "inblob").write_bytes(report_data)
        before = _read_text(entry / "generation")
        quote = (entry / "outblob").read_bytes()
        after = _read_text(entry / "generation")
    except OSError as exc:
        raise VeilError("tdx.collect_failed", f"configfs-tsm: {exc}") from exc
    finally:
        try:
            entry.rmdir()
        except OSError:
            pass  # a fake tree keeps its files; configfs removes the entry
    if before != after:
        raise VeilError("tdx.collect_race", "another writer changed the report while we read it")
    if not quote:
        raise VeilError("tdx.collect_failed", "empty outblob")
    return CollectedQuote(quote, provider, int(after) if after.isdigit() else -1)
