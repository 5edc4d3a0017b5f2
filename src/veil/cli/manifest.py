"""`veil manifest`: read a coordinator's manifest and check its signed history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import httpx
import typer
from rich.console import Console

from veil import wire
from veil.errors import VeilError
from veil.manifest import SignedManifest, verify_history

app = typer.Typer(help="Read manifests and check the signed history chain.", no_args_is_help=True)
console = Console()

CoordOpt = typer.Option("http://127.0.0.1:8470", "--coordinator", help="Coordinator URL.")


def _get(url: str) -> httpx.Response:
    try:
        return httpx.get(url, timeout=10)
    except httpx.HTTPError as exc:
        console.print(f"[red]coordinator unreachable[/]: {exc} (coordinator.unreachable)")
        raise typer.Exit(1)


@app.command()
def show(coordinator: str = CoordOpt) -> None:
    """Print the current manifest."""
    resp = _get(f"{coordinator}{wire.MANIFEST_PATH}")
    if resp.status_code != 200:
        console.print(f"[red]no manifest[/]: {resp.text}")
        raise typer.Exit(1)
    print(json.dumps(resp.json(), indent=2))


@app.command()
def history(coordinator: str = CoordOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Fetch the history, check the hash chain and every signature."""
    resp = _get(f"{coordinator}{wire.MANIFEST_HISTORY_PATH}")
    if resp.status_code != 200:
        console.print(f"[red]no history[/]: HTTP {resp.status_code}")
        raise typer.Exit(1)
    try:
        entries = [SignedManifest.parse(e) for e in resp.json()]
        head = verify_history(entries)
    except VeilError as err:
        if as_json:
            print(json.dumps({"verdict": "reject", "reason": err.reason, "message": err.message}))
        else:
            console.print(f"[red]history refused[/]: {err.message} ({err.reason})")
        raise typer.Exit(1)
    if as_json:
        print(
            json.dumps(
                {"verdict": "accept", "head": head.hex(), "length": len(entries), "digests": [e.digest.hex() for e in entries]}
            )
        )
        return
    for i, e in enumerate(entries):
        console.print(f"{i:3d}  {e.digest.hex()}  signed by {', '.join(s.key[:16] + '…' for s in e.signatures)}")
    console.print(f"[green]✔[/] chain of {len(entries)} manifest(s) verified; head {head.hex()}")


@app.command()
def revert(
    index: int = typer.Argument(..., help="Position in the history of the manifest to return to (0 = first)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Client policy (default: local `veil up`)."),
    admin_key: Optional[Path] = typer.Option(
        None, "--admin-key", help="Admin Ed25519 key, PEM (default: <state-dir>/admin.key)."
    ),
) -> None:
    """Return to an earlier manifest: set it again as a new, signed entry on top of the current head."""
    from veil import admin
    from veil.cli.admin import _admin_key
    from veil.client.policy import ClientPolicy, load_with_log

    try:
        client_policy, log = load_with_log(policy)
        entries = admin.history(ClientPolicy.load(policy))
        if not 0 <= index < len(entries):
            raise VeilError("manifest.no_such_entry", f"the history has entries 0 to {len(entries) - 1}")
        signed = admin.set_manifest(client_policy, _admin_key(policy, admin_key), entries[index].manifest, manifest_log=log)
    except VeilError as err:
        console.print(f"[red]refused[/]: {err.message} ({err.reason})")
        raise typer.Exit(1)
    console.print(f"[green]✔[/] manifest {index} set again as entry {len(entries)} ({signed.digest.hex()[:16]}…)")
