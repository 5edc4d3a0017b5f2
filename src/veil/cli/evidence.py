"""`veil evidence verify`: check one piece of hardware evidence, for scripts and independent checks.

Exit codes: 0 accepted, 1 rejected, 2 usage or parse error. ``--json`` prints
{"verdict", "reason", "message", "claims"}.
"""

from __future__ import annotations

import importlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from veil.attest.claims import Verdict
from veil.attest.files import PLATFORM_MODULES, EvidenceFiles
from veil.errors import ParseError, VeilError

app = typer.Typer(help="Verify hardware evidence offline (SEV-SNP, TDX, NVIDIA, Azure).", no_args_is_help=True)
console = Console()

EXIT_ACCEPT, EXIT_REJECT, EXIT_USAGE = 0, 1, 2


def parse_time(value: Optional[str]) -> Optional[datetime]:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _parse_nonce(value: Optional[str]) -> Optional[bytes]:
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise typer.BadParameter("--nonce must be hex") from None


@app.command("verify")
def verify_cmd(
    platform: str = typer.Option(..., "--platform", help=f"One of: {', '.join(PLATFORM_MODULES)}."),
    report: Optional[Path] = typer.Option(None, help="SEV-SNP report.bin, or NVIDIA report (.hex or binary)."),
    vcek: Optional[Path] = typer.Option(None, help="SEV-SNP VCEK or VLEK certificate (DER or PEM)."),
    chain: Optional[Path] = typer.Option(None, help="SEV-SNP ASK (or ASVK) then ARK, PEM."),
    quote: Optional[Path] = typer.Option(None, help="TDX quote."),
    collateral: Optional[Path] = typer.Option(None, help="TDX PCS collateral JSON."),
    cert_chain: Optional[Path] = typer.Option(None, "--cert-chain", help="NVIDIA certificate chain, leaf first, PEM."),
    nonce: Optional[str] = typer.Option(None, help="Expected nonce, hex (NVIDIA, Azure)."),
    evidence: Optional[Path] = typer.Option(None, help="Azure vTPM evidence JSON."),
    token: Optional[Path] = typer.Option(None, help="Microsoft Azure Attestation JWT."),
    jwks: Optional[Path] = typer.Option(None, help="MAA signing keys (JWKS JSON)."),
    rim: Optional[Path] = typer.Option(None, help="NVIDIA reference integrity manifest (optional)."),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Verify as of this ISO 8601 time (default: now)."),
    policy: Optional[Path] = typer.Option(None, help="Reference values (JSON). Default: genuine hardware, production defaults."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept debug guests."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Verify evidence from files; exit 0 accepted, 1 rejected, 2 usage or parse error."""
    if platform not in PLATFORM_MODULES:
        _emit_error(ParseError("cli.unknown_platform", f"unknown platform {platform!r}"), as_json)
        raise typer.Exit(EXIT_USAGE)
    inputs = EvidenceFiles(
        platform=platform, as_of=parse_time(as_of), policy=policy, allow_debug=allow_debug,
        report=report, vcek=vcek, chain=chain, quote=quote, collateral=collateral,
        cert_chain=cert_chain, nonce=_parse_nonce(nonce), evidence=evidence, token=token,
        jwks=jwks, rim=rim,
    )
    try:
        module = importlib.import_module(PLATFORM_MODULES[platform])
        verdict: Verdict = module.verify_files(inputs)
    except (OSError, ParseError) as exc:
        err = exc if isinstance(exc, VeilError) else ParseError("cli.unreadable_input", str(exc))
        _emit_error(err, as_json)
        raise typer.Exit(EXIT_USAGE)
    _emit(verdict, as_json)
    if verdict.accepted:
        raise typer.Exit(EXIT_ACCEPT)
    raise typer.Exit(EXIT_USAGE if verdict.reason.endswith(("missing_input", "malformed")) else EXIT_REJECT)


def _emit_error(err: VeilError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"verdict": "error", "reason": err.reason, "message": err.message, "claims": None}))
    else:
        console.print(f"[red]error[/]: {err.message} ({err.reason})")


def _emit(verdict: Verdict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(verdict.to_json(), indent=2))
        return
    color = "green" if verdict.accepted else "red"
    word = "ACCEPTED" if verdict.accepted else "REJECTED"
    console.print(f"[bold {color}]{word}[/]  reason: {verdict.reason}  {verdict.message}")
    claims = verdict.claims
    if claims is None:
        return
    if claims.simulated:
        console.print("[bold yellow]SIMULATED platform: not real hardware[/]")
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("platform", claims.platform)
    table.add_row("measurement", claims.measurement)
    table.add_row("debug", str(claims.debug))
    table.add_row("report_data", claims.report_data.hex())
    for k, v in claims.tcb.items():
        table.add_row(f"tcb.{k}", str(v))
    for k, v in claims.details.items():
        table.add_row(k, v if isinstance(v, str) else json.dumps(v))
    console.print(table)
