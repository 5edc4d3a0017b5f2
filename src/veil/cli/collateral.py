"""`veil collateral`: fill and inspect the offline AMD collateral cache.

``veil collateral fetch --report report.bin`` reads the product, the chip id (hwID) and the
*reported* TCB from an SEV-SNP report, downloads the VCEK for exactly that chip and TCB, the
ASK+ARK chain and the ARK-signed CRL from AMD's Key Distribution Service (online, once), checks
them (the chain to the pinned ARK, the CRL signature, and that the VCEK verifies this very report),
and only then writes them into the cache that ``veil evidence verify --platform sev-snp`` reads
offline. Nothing unverified is ever cached. ``veil collateral show`` lists the cache.

Exit codes: 0 done, 1 refused (KDS unreachable, collateral does not verify), 2 usage/parse error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import httpx
import typer
from cryptography import x509
from rich.console import Console
from rich.table import Table

from veil.attest.collateral import CollateralCache, find_cached_vcek
from veil.attest.snp import kds
from veil.attest.snp.abi import PRODUCTS, Report, SigningKey, TcbVersion, parse_report
from veil.attest.snp.verify import load_certificate, load_chain, vcek_extensions, verify_report
from veil.attest.trust import TrustRoots
from veil.cli.evidence import parse_time
from veil.errors import ParseError, VeilError, VerificationError

if TYPE_CHECKING:
    from veil.attest.tdx.verify import TdxVerified

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2

app = typer.Typer(help="Fetch AMD SEV-SNP collateral (VCEK, chain, CRL) once, then verify offline.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)


def make_client(timeout: float = 15.0) -> httpx.Client:
    """The HTTP client used for KDS (tests replace this with an httpx.MockTransport client)."""
    return httpx.Client(timeout=timeout, follow_redirects=True, headers={"User-Agent": "veil-collateral/1 (+AMD KDS)"})


# --- plain functions (no typer): usable from a coordinator start-up hook as well ---------------


@dataclass(frozen=True)
class ReportTarget:
    """What KDS needs to know about the chip that signed a report."""

    product: str
    chip_id: bytes
    tcb: TcbVersion  # the report's reported_tcb, decoded in the product's layout
    key_kind: str  # "vcek" | "vlek"

    @property
    def hwid(self) -> str:
        return kds.hwid_for(self.product, self.chip_id)


def report_target(report: Report, product: str | None = None) -> ReportTarget:
    """Product (CPUID of v3+ reports, else ``product``), chip id and reported TCB of ``report``."""
    from_cpuid = report.product
    if product is not None and product not in PRODUCTS:
        raise ParseError("snp.unknown_product", f"--product must be one of {', '.join(PRODUCTS)}")
    if from_cpuid and product and from_cpuid != product:
        raise ParseError("snp.product_mismatch", f"the report's CPUID says {from_cpuid}, not {product}")
    chosen = from_cpuid or product
    if chosen is None:
        raise ParseError(
            "cli.missing_input",
            f"this is a version {report.version} report, which carries no CPUID: pass --product ({'|'.join(PRODUCTS)})",
        )
    if report.signing_key == SigningKey.NONE:
        raise ParseError("snp.report_unsigned", "the report is not signed (signing key: none)")
    kind = "vlek" if report.signing_key == SigningKey.VLEK else "vcek"
    if kind == "vcek" and report.mask_chip_key:
        raise ParseError("snp.hwid_mismatch", "the report masks its chip id: no VCEK can be looked up for it")
    return ReportTarget(chosen, report.chip_id, TcbVersion.decode(report.reported_tcb, chosen), kind)


@dataclass
class FetchResult:
    target: ReportTarget
    urls: list[str] = field(default_factory=list)  # what was downloaded (empty when all came from the cache)
    written: dict[str, str] = field(default_factory=dict)  # item -> cache path
    from_cache: list[str] = field(default_factory=list)
    crl: bool = False

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "product": t.product,
            "key_kind": t.key_kind,
            "hwid": t.hwid if t.key_kind == "vcek" else None,
            "reported_tcb": t.tcb.to_json(),
            "fetched": self.urls,
            "written": self.written,
            "from_cache": self.from_cache,
            "crl": self.crl,
        }


def _get(client: httpx.Client, url: str, result: FetchResult) -> bytes:
    data = kds.fetch(url, client=client)
    result.urls.append(url)
    return data


def fetch_for_report(
    report_bytes: bytes,
    cache: CollateralCache,
    *,
    product: str | None = None,
    client: httpx.Client | None = None,
    base: str = kds.KDS_BASE,
    with_crl: bool = True,
    refresh: bool = False,
    trust: TrustRoots | None = None,
    as_of: datetime | None = None,
    vlek: bytes | None = None,
) -> FetchResult:
    """Download what verifies ``report_bytes`` offline, check it, then cache it (all or nothing).

    VCEKs and chains are immutable per chip and TCB, so cached ones are reused unless ``refresh``;
    the CRL is always downloaded again (it is the part that goes stale). A VLEK cannot be had from
    KDS by chip id (the cloud provider holds it): pass it as ``vlek`` to check it and fetch the
    ASVK chain and CRL.
    """
    report = parse_report(report_bytes)
    target = report_target(report, product)
    result = FetchResult(target)
    own_client = client is None
    client = client or make_client()
    try:
        if target.key_kind == "vcek":
            leaf = None if refresh else cache.read_vcek(target.product, target.chip_id, target.tcb)
            if leaf is None:
                leaf = _get(client, kds.vcek_url(target.product, target.chip_id, target.tcb, base), result)
            else:
                result.from_cache.append("vcek")
        else:
            if vlek is None:
                raise ParseError(
                    "cli.missing_input", "the report is signed by a VLEK, which KDS does not serve by chip id: pass --vlek"
                )
            leaf = vlek
        chain = None if refresh else cache.read_cert_chain(target.product, target.key_kind)
        if chain is None:
            chain = _get(client, kds.cert_chain_url(target.product, target.key_kind, base), result)
        else:
            result.from_cache.append("cert_chain")
        crl = _get(client, kds.crl_url(target.product, target.key_kind, base), result) if with_crl else None
    finally:
        if own_client:
            client.close()

    if leaf.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import Encoding

        leaf = load_certificate(leaf).public_bytes(Encoding.DER)
    # Everything verifies together before a byte is cached: chain to the pinned ARK, CRL signed
    # by that ARK and current, and the report's own signature with this VCEK (chip and TCB match).
    verified = verify_report(report, leaf, chain, trust=trust, as_of=as_of, crl=crl)
    if verified.product != target.product:
        raise VerificationError(
            "snp.product_mismatch", f"KDS returned {verified.product} collateral for a {target.product} request"
        )

    if target.key_kind == "vcek":
        result.written["vcek"] = str(cache.write_vcek(target.product, target.chip_id, target.tcb, leaf))
    result.written["cert_chain"] = str(cache.write_cert_chain(target.product, chain, target.key_kind))
    if crl is not None:
        result.written["crl"] = str(cache.write_crl(target.product, crl, target.key_kind))
        result.crl = True
    return result


def _describe_cert(der_or_pem: bytes) -> dict[str, Any]:
    cert = load_certificate(der_or_pem)
    return {"subject": cert.subject.rfc4514_string(), "not_after": cert.not_valid_after_utc.isoformat()}


def cache_listing(cache: CollateralCache) -> list[dict[str, Any]]:
    """Everything in the cache, one entry per file, with what it is and until when it is valid."""
    out: list[dict[str, Any]] = []
    base = cache.root / "amd"
    for product in PRODUCTS:
        for kind in kds.KEY_KINDS:
            d = base / product / kind
            if not d.is_dir():
                continue
            chain = cache.read_cert_chain(product, kind)
            if chain is not None:
                entry: dict[str, Any] = {
                    "product": product,
                    "kind": kind,
                    "item": "cert_chain",
                    "path": str(cache.cert_chain_path(product, kind)),
                }
                try:
                    entry["certificates"] = [c.subject.rfc4514_string() for c in load_chain(chain)]
                except (ValueError, VeilError):
                    entry["error"] = "unreadable"
                out.append(entry)
            crl = cache.read_crl(product, kind)
            if crl is not None:
                entry = {"product": product, "kind": kind, "item": "crl", "path": str(cache.crl_path(product, kind))}
                try:
                    c = x509.load_der_x509_crl(crl) if not crl.lstrip().startswith(b"-----") else x509.load_pem_x509_crl(crl)
                    entry["next_update"] = c.next_update_utc.isoformat() if c.next_update_utc else None
                    entry["revoked"] = len(list(c))
                    if c.next_update_utc and c.next_update_utc < datetime.now(timezone.utc):
                        entry["stale"] = True
                except ValueError:
                    entry["error"] = "unreadable"
                out.append(entry)
            if kind != "vcek":
                continue
            for path in sorted(d.glob("*/*.der")):
                entry = {
                    "product": product,
                    "kind": kind,
                    "item": "vcek",
                    "hwid": path.parent.name,
                    "tcb": path.stem,
                    "path": str(path),
                }
                try:
                    der = path.read_bytes()
                    entry.update(_describe_cert(der))
                    ext = vcek_extensions(load_certificate(der))
                    entry["tcb_extensions"] = {k: ext[k] for k in ("bootloader", "tee", "snp", "microcode", "fmc") if k in ext}
                except (ValueError, VeilError, OSError):
                    entry["error"] = "unreadable"
                out.append(entry)
    return out


# --- commands ----------------------------------------------------------------------------------

CacheOpt = typer.Option(None, "--cache", help="Cache directory (default: $VEIL_COLLATERAL_DIR or ~/.cache/veil/collateral).")


def _fail(err: VeilError, as_json: bool, code: int) -> None:
    if as_json:
        print(json.dumps({"result": "error", "reason": err.reason, "message": err.message}))
    else:
        err_console.print(f"[red]error[/]: {err.message} ({err.reason})")
    raise typer.Exit(code)


def fetch_for_quote(
    quote: bytes,
    cache: CollateralCache,
    *,
    pccs_url: str,
    trust: TrustRoots | None = None,
    as_of: datetime | None = None,
) -> tuple[str, Path, TdxVerified]:
    """Fetch the PCS collateral for a TDX ``quote``, verify the quote with it, then cache it.

    Returns (FMSPC, cache path, the verification). Nothing that fails to verify is cached.
    """
    from veil.attest.tdx.collect import fmspc_of
    from veil.attest.tdx.pcs import fetch_collateral
    from veil.attest.tdx.verify import verify_quote

    fmspc = fmspc_of(quote)
    collateral = fetch_collateral(quote, pccs_url)
    verified = verify_quote(quote, collateral, trust=trust, as_of=as_of)
    return fmspc, cache.write_tdx(fmspc, collateral), verified


@app.command("fetch")
def fetch_cmd(
    report: Optional[Path] = typer.Option(None, "--report", help="SEV-SNP report.bin (1184 bytes)."),
    platform: str = typer.Option("sev-snp", "--platform", help="sev-snp (AMD KDS) or tdx (Intel PCS/PCCS)."),
    quote: Optional[Path] = typer.Option(None, "--quote", help="TDX: a quote of this machine (binary or hex)."),
    pccs_url: str = typer.Option(
        "https://api.trustedservices.intel.com",
        "--pccs-url",
        help="TDX: Intel PCS, or a PCCS (a cloud's, or a local cache service).",
    ),
    simulation_root: list[str] = typer.Option([], "--simulation-root", help="TDX: also accept this simulation root (sim-tdx)."),
    product: Optional[str] = typer.Option(
        None, "--product", help="Milan, Genoa or Turin (needed for v2 reports, which carry no CPUID)."
    ),
    cache: Optional[Path] = CacheOpt,
    kds_url: str = typer.Option(kds.KDS_BASE, "--kds-url", help="KDS base URL (a mirror or proxy)."),
    crl: bool = typer.Option(
        True, "--crl/--no-crl", help="Also fetch the ARK-signed CRL (default; --no-crl: no revocation data is cached)."
    ),
    refresh: bool = typer.Option(False, "--refresh", help="Download the VCEK and chain again even when cached."),
    vlek: Optional[Path] = typer.Option(
        None, "--vlek", help="For VLEK-signed reports: the VLEK certificate (from the cloud provider)."
    ),
    as_of: Optional[str] = typer.Option(None, "--as-of", help="Check validity windows as of this ISO 8601 time (default: now)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Download collateral once (AMD KDS: VCEK, chain, CRL; Intel PCS: TCB info, QE identity, CRLs),
    verify it with the report or quote, and cache it for offline verification."""
    the_cache = CollateralCache(cache)
    if platform == "tdx":
        _fetch_tdx(quote, the_cache, pccs_url, simulation_root, as_of, as_json)
        return
    if platform != "sev-snp" or report is None:
        _fail(ParseError("cli.missing_input", "give --report (sev-snp) or --platform tdx --quote"), as_json, EXIT_USAGE)
    assert report is not None
    try:
        data = report.read_bytes()
        vlek_bytes = vlek.read_bytes() if vlek is not None else None
    except OSError as exc:
        _fail(ParseError("cli.unreadable_input", str(exc)), as_json, EXIT_USAGE)
    try:
        with make_client() as client:
            result = fetch_for_report(
                data,
                the_cache,
                product=product,
                client=client,
                base=kds_url.rstrip("/"),
                with_crl=crl,
                refresh=refresh,
                as_of=parse_time(as_of),
                vlek=vlek_bytes,
            )
    except ParseError as err:
        _fail(err, as_json, EXIT_USAGE)
    except VeilError as err:
        _fail(err, as_json, EXIT_REFUSED)
    if as_json:
        print(json.dumps({"result": "ok", **result.to_json()}, indent=2))
        return
    t = result.target
    console.print(
        f"[bold green]cached[/] {t.product} {t.key_kind.upper()} collateral, reported TCB "
        f"{kds.tcb_key(t.tcb)} in {the_cache.root}"
    )
    for item, path in result.written.items():
        console.print(f"  {item:10} {path}")
    if not result.crl:
        console.print("[yellow]no CRL cached (--no-crl): offline verification has no revocation data[/]")


def _fetch_tdx(
    quote: Optional[Path], cache: CollateralCache, pccs_url: str, roots: list[str], as_of: Optional[str], as_json: bool
) -> None:
    from veil.cli.evidence import read_binary_or_hex

    try:
        raw = read_binary_or_hex(quote) if quote is not None else None
        if raw is None:
            raise ParseError("cli.missing_input", "--platform tdx needs --quote")
        fmspc, path, verified = fetch_for_quote(
            raw, cache, pccs_url=pccs_url, trust=TrustRoots.production().with_simulation(*roots), as_of=parse_time(as_of)
        )
    except ParseError as err:
        _fail(err, as_json, EXIT_USAGE)
    except VeilError as err:
        _fail(err, as_json, EXIT_REFUSED)
    expires = verified.collateral_expires.isoformat() if verified.collateral_expires else None
    if as_json:
        print(
            json.dumps(
                {
                    "result": "ok",
                    "platform": "tdx",
                    "fmspc": fmspc,
                    "written": str(path),
                    "tcb_status": verified.tcb_status,
                    "expires": expires,
                    "simulated": verified.simulated,
                },
                indent=2,
            )
        )
        return
    console.print(
        f"[bold green]cached[/] Intel PCS collateral for FMSPC {fmspc} (TCB {verified.tcb_status}, "
        f"valid until {expires}) in {path}"
    )


@app.command("show")
def show_cmd(
    cache: Optional[Path] = CacheOpt,
    report: Optional[Path] = typer.Option(None, "--report", help="Only say whether this report's collateral is cached."),
    product: Optional[str] = typer.Option(None, "--product", help="Product for a v2 report."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the cached collateral (or, with --report, what is cached for that report)."""
    the_cache = CollateralCache(cache)
    if report is not None:
        try:
            parsed = parse_report(report.read_bytes())
        except OSError as exc:
            _fail(ParseError("cli.unreadable_input", str(exc)), as_json, EXIT_USAGE)
        except VeilError as err:
            _fail(err, as_json, EXIT_USAGE)
        try:
            found = find_cached_vcek(parsed, the_cache, product)
        except VeilError as err:
            _fail(err, as_json, EXIT_USAGE)
        p = found[0] if found else (product or parsed.product)
        status = {
            "product": p,
            "vcek": str(the_cache.vcek_path(p, parsed.chip_id, TcbVersion.decode(parsed.reported_tcb, p)))
            if found and p
            else None,
            "cert_chain": str(the_cache.cert_chain_path(p)) if p and the_cache.read_cert_chain(p) else None,
            "crl": str(the_cache.crl_path(p)) if p and the_cache.read_crl(p) else None,
        }
        complete = bool(status["vcek"] and status["cert_chain"])
        if as_json:
            print(json.dumps({"cached": complete, **status}, indent=2))
        else:
            for k, v in status.items():
                console.print(f"{k:10} {v or '[red]missing[/]'}")
        raise typer.Exit(EXIT_OK if complete else EXIT_REFUSED)
    entries = cache_listing(the_cache)
    if as_json:
        print(json.dumps({"root": str(the_cache.root), "entries": entries}, indent=2))
        return
    if not entries:
        console.print(f"collateral cache {the_cache.root} is empty")
        return
    table = Table(title=str(the_cache.root))
    for col in ("product", "kind", "item", "detail", "valid until"):
        table.add_column(col, overflow="fold")
    for e in entries:
        if e["item"] == "vcek":
            detail, until = f"hwid {e['hwid'][:16]}… {e['tcb']}", e.get("not_after", "?")
        elif e["item"] == "crl":
            detail, until = (
                f"{e.get('revoked', '?')} revoked" + (" [red]STALE[/]" if e.get("stale") else ""),
                e.get("next_update") or "?",
            )
        else:
            detail, until = ", ".join(s.split(",")[0] for s in e.get("certificates", [])), ""
        table.add_row(e["product"], e["kind"], e["item"], detail, until)
    console.print(table)


__all__ = ["app", "fetch_for_report", "report_target", "cache_listing", "make_client"]
