"""The kernel's configfs-tsm report interface, shared by the SEV-SNP and TDX attesters.

Protocol (Documentation/ABI/testing/configfs-tsm-report): ``mkdir <root>/<entry>``; read
``generation``; optionally write ``privlevel`` (SNP's VMPL); write ``inblob`` (exactly 64 bytes of
report data); read ``outblob`` (the report or quote), ``auxblob`` (SNP: the host's certificate
table, may be empty) and ``provider`` (``sev_guest``, ``tdx_guest``); read ``generation`` again,
which must have advanced by exactly our writes (else another process wrote to the entry and the
blob may not be ours); ``rmdir`` the entry. The root is injectable and every attribute access is
one method, so tests run a fake kernel that reacts to writes. NOT YET RUN ON REAL HARDWARE.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from veil.errors import ParseError, ProtocolError

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")


@dataclass(frozen=True)
class TsmReport:
    outblob: bytes
    auxblob: bytes
    provider: str
    generation: int


class ConfigfsTsm:
    """The configfs-tsm report interface rooted at ``root`` (a fake tree in tests)."""

    def __init__(self, root: str | os.PathLike[str] = TSM_REPORT_ROOT) -> None:
        self.root = Path(root)

    def available(self) -> bool:
        return self.root.is_dir()

    # attribute I/O: one method each so a fake kernel in tests can react to writes
    def read_attr(self, entry: Path, name: str) -> bytes:
        return (entry / name).read_bytes()

    def write_attr(self, entry: Path, name: str, data: bytes) -> None:
        with open(entry / name, "wb", buffering=0) as fh:
            fh.write(data)

    def make_entry(self) -> Path:
        entry = self.root / f"veil-{os.getpid()}-{secrets.token_hex(4)}"
        entry.mkdir()
        return entry

    def remove_entry(self, entry: Path) -> None:
        try:
            entry.rmdir()
        except OSError:
            pass  # configfs removes attributes with the entry; a fake tree may refuse: harmless

    def _generation(self, entry: Path, prefix: str) -> int:
        try:
            return int(self.read_attr(entry, "generation").decode().strip() or "0")
        except (OSError, ValueError):
            raise ProtocolError(f"{prefix}.collect_failed", "configfs-tsm entry has no readable generation") from None

    def report(self, report_data: bytes, *, provider: str, prefix: str, privlevel: int | None = None) -> TsmReport:
        """One report from ``provider``; refusals carry ``<prefix>.collect_*`` reason codes."""
        if len(report_data) > 64:
            raise ParseError(f"{prefix}.bad_report_data", "report_data is at most 64 bytes")
        if not self.available():
            raise ProtocolError(f"{prefix}.collect_unavailable", f"{self.root} missing: no configfs-tsm here")
        try:
            entry = self.make_entry()
        except OSError as exc:
            raise ProtocolError(f"{prefix}.collect_failed", f"cannot create configfs-tsm entry: {exc.strerror}") from None
        try:
            before = self._generation(entry, prefix)
            writes = 0
            if privlevel is not None:
                self.write_attr(entry, "privlevel", f"{privlevel}\n".encode())
                writes += 1
            self.write_attr(entry, "inblob", report_data.ljust(64, b"\0"))
            writes += 1
            outblob = self.read_attr(entry, "outblob")
            got = self.read_attr(entry, "provider").decode().strip()
            try:
                aux = self.read_attr(entry, "auxblob")
            except OSError:
                aux = b""
            after = self._generation(entry, prefix)
        except OSError as exc:
            raise ProtocolError(f"{prefix}.collect_failed", f"configfs-tsm: {exc.strerror or exc}") from None
        finally:
            self.remove_entry(entry)
        if after != before + writes:
            raise ProtocolError(f"{prefix}.collect_race", "another writer changed the configfs-tsm entry; retry")
        if got != provider:
            raise ProtocolError(f"{prefix}.collect_wrong_provider", f"configfs-tsm provider is {got!r}, not {provider}")
        if not outblob:
            raise ProtocolError(f"{prefix}.collect_failed", "configfs-tsm returned an empty outblob")
        return TsmReport(outblob, aux, got, after)
