"""`veil seal`: key file handling, manifest fields, and the result unseals."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import typer
from typer.testing import CliRunner

from veil.admin import load_data_key
from veil.cli.seal import seal_command
from veil.sealing import unseal_to_memfd

app = typer.Typer()
app.command("seal")(seal_command)
app.command("noop")(lambda: None)  # two commands, so "seal" stays a sub-command as in `veil seal`


def test_seal_generates_key_and_prints_manifest_fields(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    data = os.urandom(300_000)
    model.write_bytes(data)
    out = tmp_path / "model.sealed"
    res = CliRunner().invoke(app, ["seal", str(model), "--out", str(out), "--key-id", "smollm2", "--json"])
    assert res.exit_code == 0, res.output
    fields = json.loads(res.stdout.strip().splitlines()[0])
    key_file = tmp_path / "model.sealed.key"
    assert fields["key_id"] == "smollm2" and fields["key_file"] == str(key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert fields["sha256"] == hashlib.sha256(data).hexdigest()
    assert fields["sealed_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    with unseal_to_memfd(out, load_data_key(key_file), expected_tree_digest=fields["tree_sha256"]) as mf:
        assert mf.read() == data

    # an existing key file is reused, and never overwritten
    before = key_file.read_bytes()
    res = CliRunner().invoke(app, ["seal", str(model), "--out", str(tmp_path / "b.sealed"), "--key-file", str(key_file)])
    assert res.exit_code == 0, res.output
    assert key_file.read_bytes() == before
    assert "sealed_sha256" in res.stdout


def test_digest_only_prints_the_pins_of_published_weights(tmp_path: Path) -> None:
    """An auditor holding the published weights recomputes the manifest's pins; nothing is written."""
    model = tmp_path / "model.gguf"
    model.write_bytes(os.urandom(200_000))
    sealed = CliRunner().invoke(app, ["seal", str(model), "--out", str(tmp_path / "m.sealed"), "--json"])
    pins = json.loads(sealed.stdout.strip().splitlines()[0])
    res = CliRunner().invoke(app, ["seal", str(model), "--digest-only", "--json"])
    assert res.exit_code == 0, res.output
    digests = json.loads(res.stdout.strip().splitlines()[0])
    assert (digests["sha256"], digests["tree_sha256"]) == (pins["sha256"], pins["tree_sha256"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.sealed", "m.sealed.key", "model.gguf"]
    other = CliRunner().invoke(app, ["seal", str(model), "--digest-only", "--segment-size", "8192", "--json"])
    assert json.loads(other.stdout.strip().splitlines()[0])["tree_sha256"] != pins["tree_sha256"]
    assert CliRunner().invoke(app, ["seal", str(model), "--digest-only", "--segment-size", "100"]).exit_code == 1
    assert CliRunner().invoke(app, ["seal", str(model)]).exit_code == 2  # sealing needs --out


def test_seal_refuses_a_bad_key_file(tmp_path: Path) -> None:
    (tmp_path / "m").write_bytes(b"x")
    (tmp_path / "k").write_text("not a key")
    res = CliRunner().invoke(app, ["seal", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--key-file", str(tmp_path / "k")])
    assert res.exit_code == 1 and "seal.bad_key" in res.output
    assert (tmp_path / "k").read_text() == "not a key" and not (tmp_path / "o").exists()


def test_raw_key_file_accepted(tmp_path: Path) -> None:
    raw = os.urandom(32)
    (tmp_path / "raw").write_bytes(raw)
    (tmp_path / "hex").write_text(raw.hex() + "\n")
    assert load_data_key(tmp_path / "raw") == load_data_key(tmp_path / "hex") == raw
