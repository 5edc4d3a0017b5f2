"""`veil evidence verify`: check one piece of hardware evidence offline, for scripts and audits.

The files given on the command line become evidence in Veil's wire form, which then goes through
the same ``veil.attest.api`` verify/validate as the coordinator's and the client's checks. This
module is the only place that reads those files (go-sev-guest keeps this in ``tools/``).

Exit codes come from the error's type: 0 accepted, 1 refused (``VerificationError``,
``PolicyError``), 2 usage or unreadable/malformed input (``ParseError``). ``--json`` prints
{"verdict", "reason", "message", "error", "claims", "checks"}.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from veil.attest import registry
from veil.attest.api import Binding, VerifiedEvidence, VerifyOptions, summary
from veil.attest.claims import Verdict
from veil.attest.collateral import CollateralCache, find_cached_vcek
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, VeilError

app = typer.Typer(help="Verify hardware evidence offline (SEV-SNP, TDX, NVIDIA, Azure).", no_args_is_help=True)
console = Console()

EXIT_ACCEPT, EXIT_REJECT, EXIT_USAGE = 0, 1, 2
MAX_INPUT = 16 << 20  # evidence and collateral are kilobytes; refuse to slurp huge files


@dataclass(frozen=True)
class EvidenceFiles:
    """The command line's inputs; each platform reads only the fields it needs."""

    platform: str
    as_of: datetime | None = None  # None: now (UTC)
    policy: Path | None = None  # the platform's policy (JSON); None: production defaults
    allow_debug: bool = False
    report: Path | None = None  # sev-snp report.bin, nvidia report.hex|bin
    vcek: Path | None = None  # sev-snp VCEK/VLEK, DER or PEM
    chain: Path | None = None  # sev-snp ASK+ARK (or ASVK+ARK) PEM
    crl: Path | None = None  # sev-snp ARK-signed CRL, DER or PEM
    quote: Path | None = None  # tdx quote
    collateral: Path | None = None  # tdx PCS collateral JSON (also for the TDX quote inside azure-tdx-vtpm)
    cert_chain: Path | None = None  # nvidia leaf..root PEM
    nonce: bytes | None = None  # nvidia, azure: expected nonce
    report_data: bytes | None = None  # sev-snp, tdx: expected report_data (else: unbound)
    evidence: Path | None = None  # azure vTPM evidence JSON
    token: Path | None = None  # azure-maa JWT
    jwks: Path | None = None  # azure-maa signing keys
    rims: tuple[Path, ...] = ()  # nvidia driver and VBIOS RIMs (signed SWID XML)
    ocsp: tuple[Path, ...] = ()  # nvidia DER OCSP responses for the GPU's and the RIMs' chains
    simulation_roots: tuple[str, ...] = ()  # simulation roots to trust (sim-* platforms)
    cache_dir: Path | None = None  # collateral cache (None: $VEIL_COLLATERAL_DIR or ~/.cache/veil/collateral)


# ---- reading files -------------------------------------------------------------------------


def need(path: Path | None, flag: str) -> Path:
    """The path given for ``flag``, or a cli.missing_input refusal."""
    if path is None:
        raise ParseError("cli.missing_input", f"{flag} is required for this platform")
    return path


def read_bytes(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_INPUT:
            raise ParseError("cli.unreadable_input", f"{path} is too large")
        return path.read_bytes()
    except OSError as exc:
        raise ParseError("cli.unreadable_input", f"cannot read {path}: {exc.strerror or exc}") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_bytes(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ParseError("cli.unreadable_input", f"{path} is not JSON: {exc}") from None


def read_binary_or_hex(path: Path) -> bytes:
    """Binary evidence, also accepted as a hex text file (as some tools write quotes and reports)."""
    data = read_bytes(path)
    text = data.strip()
    if text and len(text) % 2 == 0 and all(c in b"0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text.decode())
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# ---- files -> evidence in wire form, one function per platform family -----------------------


@dataclass(frozen=True)
class Loaded:
    evidence: dict[str, Any]
    binding: Binding


def _bound(value: bytes | None) -> Binding:
    return Binding.to(value) if value is not None else Binding.unbound()


def _snp(inputs: EvidenceFiles, cache: CollateralCache) -> Loaded:
    from cryptography.hazmat.primitives.serialization import Encoding

    from veil.attest.snp import SnpEvidence, parse_report
    from veil.attest.snp.verify import load_certificate, product_of_certificate

    report = read_bytes(need(inputs.report, "--report"))
    if inputs.vcek is not None:
        vcek = read_bytes(inputs.vcek)
        if vcek.lstrip().startswith(b"-----BEGIN"):
            vcek = load_certificate(vcek).public_bytes(Encoding.DER)
    else:
        found = find_cached_vcek(parse_report(report), cache)
        if found is None:
            raise ParseError(
                "cli.missing_input",
                f"--vcek not given and no cached VCEK for this chip and TCB in {cache.root} "
                "(run `veil collateral fetch --report ...` once, online)",
            )
        vcek = found[1]
    product = _product(report) or product_of_certificate(vcek)
    # --chain, else the cache's, else none: the verifier then uses AMD's, shipped with Veil
    chain = read_bytes(inputs.chain) if inputs.chain is not None else (cache.read_cert_chain(product) if product else None)
    crl = read_bytes(inputs.crl) if inputs.crl is not None else None  # None: the verifier asks the cache
    ev = SnpEvidence(report=report, vcek=vcek, chain_pem=chain or b"", crl=crl)
    return Loaded({"platform": inputs.platform, "snp": ev.to_json()}, _bound(inputs.report_data))


def _product(report: bytes) -> str | None:
    from veil.attest.snp import parse_report

    try:
        return parse_report(report).product
    except VeilError:
        return None  # verification says what is wrong with it


def _tdx(inputs: EvidenceFiles, cache: CollateralCache) -> Loaded:
    quote = read_binary_or_hex(need(inputs.quote, "--quote"))
    tdx: dict[str, Any] = {"quote": _b64(quote)}
    if inputs.collateral is not None:
        tdx["collateral"] = read_json(inputs.collateral)
    return Loaded({"platform": inputs.platform, "tdx": tdx}, _bound(inputs.report_data))


def _nvidia(inputs: EvidenceFiles, cache: CollateralCache) -> Loaded:
    from veil.attest.nvidia.abi import load_report

    if inputs.report is None or inputs.cert_chain is None or inputs.nonce is None:
        raise ParseError("cli.missing_input", "nvidia needs --report, --cert-chain and --nonce")
    gpu = {
        "report": _b64(load_report(read_bytes(inputs.report))),
        "cert_chain_pem": _b64(read_bytes(inputs.cert_chain)),
        "rims": [_b64(read_bytes(p)) for p in inputs.rims],
        "ocsp": [_b64(read_bytes(p)) for p in inputs.ocsp],
    }
    return Loaded({"platform": "nvidia", "nvidia": gpu}, Binding.to(inputs.nonce))


def _azure_vtpm(inputs: EvidenceFiles, cache: CollateralCache) -> Loaded:
    evidence: dict[str, Any] = {"platform": inputs.platform, "vtpm": read_json(need(inputs.evidence, "--evidence"))}
    if inputs.nonce is None:
        raise ParseError("cli.missing_input", "--nonce is required for vTPM evidence")
    if inputs.collateral is not None:  # TDX: else the collateral cache's for the quote's FMSPC
        evidence["collateral"] = read_json(inputs.collateral)
    if inputs.chain is not None:
        evidence["chain"] = _b64(read_bytes(inputs.chain))
    if inputs.crl is not None:  # SNP: else the collateral cache's
        evidence["crl"] = _b64(read_bytes(inputs.crl))
    return Loaded(evidence, Binding.to(inputs.nonce))


def _azure_maa(inputs: EvidenceFiles, cache: CollateralCache) -> Loaded:
    token = read_bytes(need(inputs.token, "--token")).decode("ascii", "replace").strip()
    maa = {"token": token, "certs": read_json(need(inputs.jwks, "--jwks"))}
    return Loaded({"platform": "azure-maa", "maa": maa}, _bound(inputs.nonce))


LOADERS: dict[str, Callable[[EvidenceFiles, CollateralCache], Loaded]] = {
    "sev-snp": _snp,
    "sim-snp": _snp,
    "tdx": _tdx,
    "sim-tdx": _tdx,
    "nvidia": _nvidia,
    "azure-snp-vtpm": _azure_vtpm,
    "azure-tdx-vtpm": _azure_vtpm,
    "sim-azure-snp": _azure_vtpm,
    "sim-azure-tdx": _azure_vtpm,
    "azure-maa": _azure_maa,
}


def load_policy(model: type[BaseModel], inputs: EvidenceFiles) -> Any:
    """The --policy file as the platform's policy model (or its production defaults), with
    --allow-debug applied."""
    if inputs.policy is None:
        policy = model()
    else:
        try:
            policy = model.model_validate(read_json(inputs.policy))
        except ValidationError as exc:
            raise ParseError("cli.malformed_policy", f"{inputs.policy} is not a valid policy: {exc}") from None
    if inputs.allow_debug:
        updates: dict[str, Any] = {
            name: sub.model_copy(update={"allow_debug": True})
            for name, sub in policy
            if isinstance(sub, BaseModel) and "allow_debug" in type(sub).model_fields
        }
        if "allow_debug" in model.model_fields:
            updates["allow_debug"] = True
        policy = policy.model_copy(update=updates)
    return policy


def verify_files(inputs: EvidenceFiles) -> Verdict:
    """Files in, verdict out (the CLI's edge: typed errors become a Verdict here)."""
    verified: VerifiedEvidence | None = None
    try:
        loader = LOADERS.get(inputs.platform)
        if loader is None:
            raise ParseError("cli.unknown_platform", f"unknown platform {inputs.platform!r}")
        cache = CollateralCache(inputs.cache_dir)
        loaded = loader(inputs, cache)
        verifier = registry.verifier(inputs.platform)
        policy = load_policy(verifier.policy_model, inputs)
        trust = TrustRoots.production().with_simulation(*inputs.simulation_roots)
        options = VerifyOptions(loaded.binding, trust, inputs.as_of, cache)
        verified = verifier.verify(loaded.evidence, options)
        if verified.claims.platform != inputs.platform and inputs.platform != "nvidia":
            raise ParseError(
                "cli.platform_mismatch", f"--platform {inputs.platform} but the evidence verifies as {verified.claims.platform}"
            )
        checks = verified.checks + tuple(verifier.validate(verified, policy))
    except VeilError as err:
        return Verdict.reject(err, verified.claims if verified else None, verified.checks if verified else ())
    return Verdict.accept(verified.claims, summary(verified.claims), checks)


def parse_time(value: Optional[str]) -> Optional[datetime]:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an ISO 8601 time: {value}") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _hex(value: Optional[str], flag: str) -> Optional[bytes]:
    if value is None:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise typer.BadParameter(f"{flag} must be hex") from None


@app.command("verify")
def verify_cmd(
    platform: str = typer.Option(..., "--platform", help=f"One of: {', '.join(LOADERS)}."),
    report: Optional[Path] = typer.Option(None, help="SEV-SNP report.bin, or NVIDIA report (.hex or binary)."),
    vcek: Optional[Path] = typer.Option(None, help="SEV-SNP VCEK or VLEK certificate (DER or PEM)."),
    chain: Optional[Path] = typer.Option(None, help="SEV-SNP ASK (or ASVK) then ARK, PEM."),
    crl: Optional[Path] = typer.Option(None, help="SEV-SNP ARK-signed CRL (default: the collateral cache's)."),
    quote: Optional[Path] = typer.Option(None, help="TDX quote (binary or hex)."),
    collateral: Optional[Path] = typer.Option(None, help="TDX PCS collateral JSON (default: the collateral cache's)."),
    cert_chain: Optional[Path] = typer.Option(None, "--cert-chain", help="NVIDIA certificate chain, leaf first, PEM."),
    nonce: Optional[str] = typer.Option(None, help="Expected nonce, hex (NVIDIA, Azure)."),
    report_data: Optional[str] = typer.Option(
        None, "--report-data", help="Expected report_data, hex (SEV-SNP, TDX); without it freshness is NOT checked."
    ),
    evidence: Optional[Path] = typer.Option(None, help="Azure vTPM evidence JSON."),
    token: Optional[Path] = typer.Option(None, help="Microsoft Azure Attestation JWT."),
    jwks: Optional[Path] = typer.Option(
        None, help="The MAA instance's signing certificates (its /certs JWKS, with x5c chains to a pinned root)."
    ),
    rim: list[Path] = typer.Option([], "--rim", help="NVIDIA driver or VBIOS RIM (signed SWID XML); repeat for both."),
    ocsp: list[Path] = typer.Option(
        [], "--ocsp", help="NVIDIA OCSP response (DER) for a certificate of the GPU's or a RIM's chain; repeat."
    ),
    simulation_root: list[str] = typer.Option(
        [], "--simulation-root", help="Trust this simulation root (SHA-256 hex), for sim-* evidence."
    ),
    cache: Optional[Path] = typer.Option(
        None, "--cache", help="Collateral cache (default: $VEIL_COLLATERAL_DIR or ~/.cache/veil/collateral)."
    ),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Verify as of this ISO 8601 time (default: now)."),
    policy: Optional[Path] = typer.Option(None, help="The platform's policy (JSON). Default: production defaults."),
    allow_debug: bool = typer.Option(False, "--allow-debug", help="Accept debug guests."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Verify evidence from files; exit 0 accepted, 1 refused, 2 usage or parse error."""
    inputs = EvidenceFiles(
        platform=platform,
        as_of=parse_time(as_of),
        policy=policy,
        allow_debug=allow_debug,
        report=report,
        vcek=vcek,
        chain=chain,
        crl=crl,
        quote=quote,
        collateral=collateral,
        cert_chain=cert_chain,
        nonce=_hex(nonce, "--nonce"),
        report_data=_hex(report_data, "--report-data"),
        evidence=evidence,
        token=token,
        jwks=jwks,
        rims=tuple(rim),
        ocsp=tuple(ocsp),
        simulation_roots=tuple(simulation_root),
        cache_dir=cache,
    )
    verdict = verify_files(inputs)
    _emit(verdict, as_json)
    if verdict.accepted:
        raise typer.Exit(EXIT_ACCEPT)
    raise typer.Exit(EXIT_USAGE if verdict.error == "parse" else EXIT_REJECT)


def _emit(verdict: Verdict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(verdict.to_json(), indent=2))
        return
    color = "green" if verdict.accepted else "red"
    word = "ACCEPTED" if verdict.accepted else ("ERROR" if verdict.error == "parse" else "REJECTED")
    console.print(f"[bold {color}]{word}[/]  reason: {verdict.reason}  {verdict.message}")
    for check in verdict.checks:
        mark = "[yellow]![/]" if check.result.startswith("NOT CHECKED") else "[green]✔[/]"
        console.print(f"  {mark} {check.name}: {check.result}")
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
