"""Admin commands: upload secrets to a verified coordinator, signed reads (audit log, workers,
secret ids), tenants, and recovering a coordinator's state."""

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
        result = admin.put_secret(ClientPolicy.load(policy), _admin_key(policy, admin_key), key_id, admin.load_data_key(key_file))
    except VeilError as err:
        _fail(err)
    console.print(f"[green]✔[/] secret {result['key_id']!r} stored, sealed inside the verified coordinator")


@secret_app.command("list")
def secret_list(
    policy: Optional[Path] = PolicyOpt,
    admin_key: Optional[Path] = AdminKeyOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the ids of the secrets the coordinator holds (a signed admin read; never the values)."""
    from veil import admin
    from veil.client.policy import ClientPolicy

    try:
        key_ids = admin.list_secrets(ClientPolicy.load(policy), _admin_key(policy, admin_key))
    except VeilError as err:
        _fail(err)
    print(json.dumps(key_ids) if as_json else "\n".join(key_ids))


def workers(
    policy: Optional[Path] = PolicyOpt,
    admin_key: Optional[Path] = AdminKeyOpt,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List the workers that attested recently (a signed admin read)."""
    from veil import admin
    from veil.client.policy import ClientPolicy

    try:
        found = admin.list_workers(ClientPolicy.load(policy), _admin_key(policy, admin_key))
    except VeilError as err:
        _fail(err)
    if as_json:
        print(json.dumps(found, indent=2))
        return
    table = Table("worker", "platform", "measurement", "simulated", "last seen (UTC)")
    for w in found:
        table.add_row(
            w["worker_id"], w["platform"], w["measurement"][:16] + "…", "yes" if w["simulated"] else "no", _when(w["last_seen"])
        )
    console.print(table)


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _admin_key(policy: Optional[Path], path: Optional[Path]):  # type: ignore[no-untyped-def]
    from veil import admin

    return admin.load_admin_key(path or _state_file(policy, "admin.key"))


def audit(
    policy: Optional[Path] = PolicyOpt,
    admin_key: Optional[Path] = AdminKeyOpt,
    after: int = typer.Option(0, help="Only records after this sequence number."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the coordinator's decisions: registrations, key releases, uploads (never secret values).

    A signed admin read; the hash chain is checked up to the head the coordinator signs, which must
    extend the head seen last time (kept in audit-log.json beside the policy).
    """
    from veil import admin
    from veil.client.policy import ClientPolicy

    try:
        records = admin.audit(
            ClientPolicy.load(policy), _admin_key(policy, admin_key), after, log_path=_state_file(policy, admin.AUDIT_LOG_FILE)
        )
    except VeilError as err:
        _fail(err)
    if as_json:
        print(json.dumps(records, indent=2))
        return
    table = Table("seq", "time (UTC)", "event", "subject", "decision", "reason")
    for r in records:
        color = "green" if r["decision"] in ("accepted", "released", "restored") else "red"
        reason = r["reason"] + (f" ×{r['detail']['count']}" if "count" in r["detail"] else "")
        table.add_row(str(r["seq"]), _when(r["at"]), r["event"], r["subject"][:32], f"[{color}]{r['decision']}[/]", reason)
    console.print(table)
    console.print(f"[green]✔[/] hash chain verified up to the signed head ({len(records)} record(s) shown)")


def recover(
    recovery_key: Path = typer.Option(..., "--recovery-key", help="Your X25519 recovery key, PEM."),
    admin_key: Optional[Path] = AdminKeyOpt,
    source: Optional[str] = typer.Option(None, help="URL serving the sealed recovery records (default: the target)."),
    policy: Optional[Path] = PolicyOpt,
) -> None:
    """Restore the sealed state into a new, verified (locked) coordinator, authorised by your admin key."""
    from veil import admin
    from veil.client.policy import ClientPolicy

    try:
        target = ClientPolicy.load(policy)
        result = admin.recover(
            source or target.coordinator_url, admin.load_recovery_key(recovery_key), _admin_key(policy, admin_key), target
        )
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
        key = _admin_key(policy, admin_key)
        api_key, entry, signed = admin.publish_tenant(
            client_policy,
            key,
            tenant_id,
            requests_per_minute,
            tokens_per_minute,
            manifest_log=log,
        )
    except VeilError as err:
        _fail(err)
    console.print(f"[green]✔[/] tenant {entry.id!r} added (manifest {signed.digest.hex()[:16]}…).")
    console.print("[dim]Running workers enforce it at their next re-attestation (every 60 s by default).[/]")
    console.print("API key (shown once; Veil stores only its SHA-256):")
    print(api_key)
