"""Admin commands: upload secrets to a verified coordinator, read the audit log, recover state."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from veil.errors import VeilError

tenant_app = typer.Typer(help="Manage tenants: API keys (hashed in the manifest) and rate limits.", no_args_is_help=True)
secret_app = typer.Typer(help="Upload secrets (model data keys) sealed to the attested coordinator.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

PolicyOpt = typer.Option(None, "--policy", help="Client policy that the coordinator must satisfy (default: local `veil up`).")
AdminKeyOpt = typer.Option(None, "--admin-key", help="Admin Ed25519 key, PEM (default: <state-dir>/admin.key).")


def _fail(err: VeilError) -> None:
    err_console.print(f"[red]refused[/]: {err.message} ([bold]{err.reason}[/])")
    raise typer.Exit(1)


def _state_file(policy: Optional[Path], name: str) -> Path:
    from veil.client.policy import default_policy_path

    return (policy or default_policy_path()).parent / name


@secret_app.command("put")
def secret_put(
    key_id: str = typer.Argument(..., help="Key id the manifest names (a model's key_id)."),
    key_file: Path = typer.Option(..., "--file", help="The secret: a 32-byte data key file (e.g. from `veil seal`)."),
    policy: Optional[Path] = PolicyOpt,
    admin_key: Optional[Path] = AdminKeyOpt,
) -> None:
    """Verify the coordinator, then upload the secret HPKE-sealed to its attested key."""
    from veil import admin
    from veil.client.policy import ClientPolicy

    try:
        result = admin.put_secret(
            ClientPolicy.load(policy), admin.load_admin_key(admin_key or _state_file(policy, "admin.key")),
            key_id, admin.load_data_key(key_file),
        )
    except VeilError as err:
        _fail(err)
    console.print(f"[green]✔[/] secret {result['key_id']!r} stored, sealed inside the verified coordinator")


def audit(
    policy: Optional[Path] = PolicyOpt,
    after: int = typer.Option(0, help="Only records after this id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the coordinator's decisions: registrations, key releases, uploads (never secret values)."""
    from veil import admin
    from veil.client.policy import ClientPolicy

    try:
        records = admin.audit(ClientPolicy.load(policy).coordinator_url, after)
    except VeilError as err:
        _fail(err)
    if as_json:
        print(json.dumps(records, indent=2))
        return
    table = Table("id", "time (UTC)", "event", "subject", "decision", "reason")
    for r in records:
        when = datetime.fromtimestamp(r["at"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        color = "green" if r["decision"] in ("accepted", "released", "restored") else "red"
        table.add_row(str(r["id"]), when, r["event"], r["subject"][:32], f"[{color}]{r['decision']}[/]", r["reason"])
    console.print(table)


def recover(
    recovery_key: Path = typer.Option(..., "--recovery-key", help="Your X25519 recovery key, PEM."),
    source: Optional[str] = typer.Option(None, help="URL serving the sealed recovery records (default: the target)."),
    policy: Optional[Path] = PolicyOpt,
) -> None:
    """Restore the sealed state into a new, verified (locked) coordinator."""
    from veil import admin
    from veil.client.policy import ClientPolicy

    try:
        target = ClientPolicy.load(policy)
        result = admin.recover(source or target.coordinator_url, admin.load_recovery_key(recovery_key), target)
    except VeilError as err:
        _fail(err)
    console.print(f"[green]✔[/] restored: {result['manifests']} manifest(s), {result['secrets']} secret(s)")


@tenant_app.command("add")
def tenant_add(
    tenant_id: str = typer.Argument(..., help="Tenant id (letters, digits, . _ -)."),
    requests_per_minute: int = typer.Option(60, "--rpm", help="Requests per minute, per worker."),
    tokens_per_minute: Optional[int] = typer.Option(None, "--tpm", help="Tokens per minute, per worker."),
    policy: Optional[Path] = PolicyOpt,
    admin_key: Optional[Path] = AdminKeyOpt,
) -> None:
    """Create a tenant: print its API key ONCE, add its key hash to a new signed manifest."""
    from veil import admin
    from veil.client.policy import load_with_log

    try:
        client_policy, log = load_with_log(policy)
        key = admin.load_admin_key(admin_key or _state_file(policy, "admin.key"))
        api_key, entry, signed = admin.publish_tenant(
            client_policy, key, tenant_id, requests_per_minute, tokens_per_minute, manifest_log=log,
        )
    except VeilError as err:
        _fail(err)
    console.print(f"[green]✔[/] tenant {entry.id!r} added (manifest {signed.digest.hex()[:16]}…).")
    console.print("[dim]Running workers enforce it at their next re-attestation (every 60 s by default).[/]")
    console.print("API key (shown once; Veil stores only its SHA-256):")
    print(api_key)
