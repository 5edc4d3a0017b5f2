"""`veil seal MODEL --out MODEL.sealed`: encrypt weights under a per-model data key.

Mount with ``app.command("seal")(seal_command)`` or ``app.add_typer(seal.app)``. The data key is read
from --key-file, or generated and written there (0600; default ``<out>.key``). Upload it to the
coordinator encrypted to its attested key, then delete the file: whoever holds it can unseal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from veil.admin import load_data_key, write_new_data_key
from veil.errors import VeilError
from veil.sealing.format import DEFAULT_SEGMENT_SIZE, default_key_id
from veil.sealing.seal import seal_file

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
_err = Console(stderr=True)


def seal_command(
    model: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="Plaintext weights."),
    out: Path = typer.Option(..., "--out", "-o", help="Sealed file to write."),
    key_id: Optional[str] = typer.Option(None, "--key-id", help="Key id in the header (default: derived from the key)."),
    key_file: Optional[Path] = typer.Option(
        None, "--key-file", help="Data key (hex); created with a fresh key if absent. Default: OUT.key."
    ),
    segment_size: int = typer.Option(DEFAULT_SEGMENT_SIZE, "--segment-size", help="Ciphertext segment bytes."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest fields as JSON."),
) -> None:
    """Seal MODEL: streaming AES-256-GCM segments, header bound into every segment."""
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
        reason = f"{err.reason}: {err.message}" if isinstance(err, VeilError) else str(err)
        _err.print(f"[red]seal failed[/]: {reason}")
        raise typer.Exit(1) from None
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
    if as_json:
        print(json.dumps(fields))
        return
    out_console = Console()
    for name, value in fields.items():
        out_console.print(f"[bold]{name:>13}[/] {value}")
    if created:
        _err.print(
            f"[yellow]new data key written to {key_path}[/]: upload it to the attested "
            "coordinator (encrypted to its key), then delete this file."
        )


app.command("seal")(seal_command)
