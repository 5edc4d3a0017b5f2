"""`veil seal MODEL --out MODEL.sealed`: encrypt weights under a per-model data key.

Mount with ``app.command("seal")(seal_command)`` or ``app.add_typer(seal.app)``. The data key is read
from --key-file, or generated and written there (0600; default ``<out>.key``). Upload it to the
coordinator encrypted to its attested key, then delete the file: whoever holds it can unseal.
``veil seal MODEL --digest-only`` prints the pins (sha256, tree_sha256) of published weights, so
anyone can check a manifest's entry without the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from veil.admin import load_data_key, write_new_data_key
from veil.errors import VeilError
from veil.sealing.format import DEFAULT_SEGMENT_SIZE, default_key_id
from veil.sealing.seal import plaintext_digests, seal_file

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
_err = Console(stderr=True)


def seal_command(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="Plaintext weights."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Sealed file to write (required unless --digest-only)."),
    key_id: Optional[str] = typer.Option(None, "--key-id", help="Key id in the header (default: derived from the key)."),
    key_file: Optional[Path] = typer.Option(
        None, "--key-file", help="Data key (hex); created with a fresh key if absent. Default: OUT.key."
    ),
    segment_size: int = typer.Option(DEFAULT_SEGMENT_SIZE, "--segment-size", help="Ciphertext segment bytes."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest fields as JSON."),
    digest_only: bool = typer.Option(
        False,
        "--digest-only",
        help="Print MODEL's sha256 and tree_sha256 without sealing: check a manifest's pins against published weights.",
    ),
) -> None:
    """Seal MODEL: streaming AES-256-GCM segments, header bound into every segment."""
    if digest_only:
        _print_digests(model, segment_size, as_json)
        return
    if out is None:
        _err.print("[red]seal failed[/]: --out is required (or pass --digest-only)")
        raise typer.Exit(2)
    key_path = key_file or out.with_name(out.name + ".key")
    created = not key_path.exists()
    try:
        key = write_new_data_key(key_path) if created else load_data_key(key_path)
        kid = key_id or default_key_id(key)
        size = model.stat().st_size
        columns = (
            TextColumn("{task.description:>8}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=_err, transient=True, disable=size < (8 << 20)) as bar:
            tasks = {"hashing": bar.add_task("hashing", total=size), "sealing": bar.add_task("sealing", total=size)}
            header = seal_file(
                model, out, key, kid, lambda phase, done, _t: bar.update(tasks[phase], completed=done), segment_size=segment_size
            )
    except (VeilError, OSError, ValueError) as err:
        if created:
            key_path.unlink(missing_ok=True)
        _fail("seal", err)
    fields = {
        "key_id": header.key_id,
        "sha256": header.plaintext_sha256,
        "tree_sha256": header.tree_sha256,
        "sealed_sha256": header.sealed_sha256,
        "size": header.plaintext_size,
        "sealed_size": header.sealed_size,
        "source": str(out),
        "key_file": str(key_path),
    }
    _print_fields(fields, as_json)
    if created and not as_json:
        _err.print(
            f"[yellow]new data key written to {key_path}[/]: upload it to the attested "
            "coordinator (encrypted to its key), then delete this file."
        )


app.command("seal")(seal_command)


def _print_digests(model: Path, segment_size: int, as_json: bool) -> None:
    """The pins a manifest holds for MODEL: its whole-file SHA-256 and its segment tree."""
    try:
        size, flat, tree = plaintext_digests(model, segment_size)
    except (VeilError, OSError, ValueError) as err:
        _fail("digest", err)
    _print_fields({"sha256": flat.hex(), "tree_sha256": tree.hex(), "size": size, "segment_size": segment_size}, as_json)


def _fail(what: str, err: Exception) -> NoReturn:
    reason = f"{err.reason}: {err.message}" if isinstance(err, VeilError) else str(err)
    _err.print(f"[red]{what} failed[/]: {reason}")
    raise typer.Exit(1) from None


def _print_fields(fields: dict[str, object], as_json: bool) -> None:
    """One JSON object, or one aligned line per field."""
    if as_json:
        print(json.dumps(fields))
        return
    out_console = Console()
    for name, value in fields.items():
        out_console.print(f"[bold]{name:>13}[/] {value}")
