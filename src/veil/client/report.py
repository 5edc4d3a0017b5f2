"""Readable verification output for people (JSON is the same data, from ``to_json``)."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from veil.client.verify import AttestedCoordinator
from veil.errors import VeilError

SIMULATED_BANNER = (
    "SIMULATED TEE: this deployment runs on or admits a simulated platform. The checks below ran "
    "for real, but no hardware protects the data. Use it for development and tests only."
)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def render_verification(attested: AttestedCoordinator, console: Console) -> None:
    claims = attested.verdict.claims
    if attested.simulated:
        parts = "\n".join(f"  - {p}" for p in attested.simulated_parts)
        console.print(
            Panel(f"{SIMULATED_BANNER}\n\nSimulated:\n{parts}", title="[bold yellow]SIMULATED[/]", border_style="yellow")
        )
    table = Table(title="Veil attestation verified", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    if claims:
        table.add_row("platform", claims.platform + ("  (SIMULATED)" if claims.simulated else ""))
        table.add_row("measurement", claims.measurement)
        table.add_row("debug", _yes_no(claims.debug))
        if claims.tcb:
            table.add_row("TCB", ", ".join(f"{k}={v}" for k, v in claims.tcb.items()))
    if attested.manifest is not None:
        m = attested.manifest.manifest
        table.add_row("manifest", attested.manifest.digest.hex())
        table.add_row("models", ", ".join(x.name for x in m.models) or "-")
        sandbox = m.sandbox.profile + (" + GPU" if m.sandbox.allow_gpu else "")
        if m.sandbox.profile == "none":
            sandbox += "  (NOT SANDBOXED: development only)"
        table.add_row("sandbox", sandbox)
        for ref in m.workers:
            gpu = "GPU evidence required (bound into the CPU report)" if ref.require_gpu else "no GPU required"
            debug = ", DEBUG allowed" if ref.allow_debug else ""
            table.add_row("admits workers", f"{ref.platform}, {len(ref.measurements)} measurement(s), {gpu}{debug}")
    rules = attested.admission
    if rules:
        simulation = "trusted (named roots only)" if rules["trust_simulated"] else "refused"
        table.add_row(
            "client accepts",
            f"worker platforms {', '.join(rules['worker_platforms']) or 'none'}; debug {_yes_no(rules['allow_debug'])}; "
            f"sandbox {', '.join(rules['sandbox_profiles']) or 'none'}; simulation {simulation}",
        )
    table.add_row("OHTTP key ids", ", ".join(str(c.key_id) for c in attested.key_configs))
    chosen = attested.suite
    table.add_row(
        "OHTTP suite",
        f"{chosen.name}, key id {chosen.config.key_id}"
        + ("  (post-quantum hybrid)" if chosen.post_quantum else "  (classical: NOT post-quantum)"),
    )
    table.add_row("coordinator", attested.coordinator_url)
    table.add_row("gateway", attested.gateway_url)
    if attested.relay_url:
        table.add_row("relay", f"{attested.relay_url} (the gateway does not see this client's address)")
    table.add_row("verified at", attested.verified_at.isoformat(timespec="seconds"))
    table.add_row("took", f"{attested.elapsed_ms:.1f} ms")
    console.print(table)
    for check, result in attested.checks:
        console.print(f"  [green]✔[/] {check}: {result}")


def render_failure(err: VeilError, console: Console) -> None:
    console.print(Panel(f"{err.message}\n\nreason: [bold]{err.reason}[/]", title="[bold red]REFUSED[/]", border_style="red"))
