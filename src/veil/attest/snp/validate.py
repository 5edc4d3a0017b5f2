"""SEV-SNP policy: what a verified report must also say before Veil trusts it.

Verification proves the report is genuine; validation decides whether this particular guest is
acceptable (right code, no debug, recent firmware...). Production defaults refuse debug guests,
migration agents and VMPLs above 0.
"""

from __future__ import annotations

import hmac

from pydantic import BaseModel, ConfigDict, Field, field_validator

from veil.attest.api import Check
from veil.attest.snp.abi import GENOA, MILAN, TURIN, Report, TcbVersion
from veil.errors import PolicyError


def _hex_list(values: list[str], size: int | None, name: str) -> list[str]:
    out = []
    for v in values:
        v = v.lower().removeprefix("0x")
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raise ValueError(f"{name}: {v!r} is not hex") from None
        if size is not None and len(raw) != size:
            raise ValueError(f"{name}: {v!r} is {len(raw)} bytes, expected {size}")
        out.append(v)
    return out


# Production floors per product, used for every component a policy leaves unset. They are the TCB
# of the oldest production firmware Veil has real evidence from (docs/attestation-snp.md):
# Milan: SEV firmware 1.52.4 (virtee/sev's Milan report, ../shared/vectors/sev-snp/milan-vcek);
# Genoa: the lower of an Azure Genoa VCEK of 2025 (openpcc's testdata, bl 10 tee 0 snp 23 ucode 84)
# and a Genoa-class (model 0xA0) CoCo pod's report (Trustee's e2e evidence, ucode 25); Turin:
# virtee/sev's Turin VCEK.
# Deployments should raise them per AMD's security bulletins (e.g. AMD-SB-3023 is fixed from
# SNP SPL 0x1b on Milan and Genoa, 4 on Turin).
DEFAULT_MINIMUM_TCB: dict[str, TcbVersion] = {
    MILAN: TcbVersion(bootloader=3, tee=0, snp=8, microcode=115),
    GENOA: TcbVersion(bootloader=10, tee=0, snp=23, microcode=25),
    TURIN: TcbVersion(bootloader=0, tee=0, snp=0, microcode=9, fmc=0),
}


class MinimumTcb(BaseModel):
    """Lowest acceptable SVN per TCB component; None: the product's floor (DEFAULT_MINIMUM_TCB).
    fmc only matters on Turin."""

    model_config = ConfigDict(extra="forbid")
    bootloader: int | None = Field(default=None, ge=0, le=255)
    tee: int | None = Field(default=None, ge=0, le=255)
    snp: int | None = Field(default=None, ge=0, le=255)
    microcode: int | None = Field(default=None, ge=0, le=255)
    fmc: int | None = Field(default=None, ge=0, le=255)

    def resolve(self, product: str | None, turin_layout: bool) -> TcbVersion:
        """The minimum for ``product``: what is set here, the product's floor for the rest."""
        floor = DEFAULT_MINIMUM_TCB.get(product or "", TcbVersion(0, 0, 0, 0, 0))

        def pick(name: str) -> int:
            value = getattr(self, name)
            return int(value if value is not None else (getattr(floor, name) or 0))

        fmc = pick("fmc") if turin_layout else None
        return TcbVersion(pick("bootloader"), pick("tee"), pick("snp"), pick("microcode"), fmc)


class SnpPolicy(BaseModel):
    """Reference values and rules for SEV-SNP guests. Empty allowlists mean "any"."""

    model_config = ConfigDict(extra="forbid")
    measurements: list[str] = Field(default_factory=list, description="allowed MEASUREMENTs (48-byte hex)")
    allow_debug: bool = False
    allow_migration_agent: bool = False
    require_smt_off: bool = False
    require_single_socket: bool = False
    max_vmpl: int = Field(default=0, ge=0, le=3)
    minimum_tcb: MinimumTcb = Field(default_factory=lambda: MinimumTcb())
    minimum_guest_svn: int = Field(default=0, ge=0)
    minimum_firmware: tuple[int, int] | None = Field(default=None, description="(major, minor) of the SEV firmware")
    host_data: list[str] = Field(default_factory=list, description="allowed HOST_DATA values (32-byte hex)")
    id_key_digests: list[str] = Field(default_factory=list)
    author_key_digests: list[str] = Field(default_factory=list)
    chip_ids: list[str] = Field(default_factory=list, description="allowed CHIP_IDs (64-byte hex)")
    products: list[str] = Field(default_factory=list, description="allowed products: Milan, Genoa, Turin")
    report_data: str | None = Field(default=None, description="exact REPORT_DATA (64-byte hex); usually the caller's binding")

    @field_validator("measurements")
    @classmethod
    def _m(cls, v: list[str]) -> list[str]:
        return _hex_list(v, 48, "measurements")

    @field_validator("host_data")
    @classmethod
    def _h(cls, v: list[str]) -> list[str]:
        return _hex_list(v, 32, "host_data")

    @field_validator("id_key_digests", "author_key_digests")
    @classmethod
    def _k(cls, v: list[str]) -> list[str]:
        return _hex_list(v, 48, "key digests")

    @field_validator("chip_ids")
    @classmethod
    def _c(cls, v: list[str]) -> list[str]:
        return _hex_list(v, 64, "chip_ids")

    @field_validator("report_data")
    @classmethod
    def _r(cls, v: str | None) -> str | None:
        return None if v is None else _hex_list([v], 64, "report_data")[0]


def _in(value: bytes, allowed: list[str]) -> bool:
    return any(hmac.compare_digest(value, bytes.fromhex(a)) for a in allowed)


def validate_report(report: Report, policy: SnpPolicy, product: str | None = None) -> list[Check]:
    """Raise PolicyError with a reason code when the (verified) report breaks the policy; else
    return the checks made, as reports show them."""
    gp = report.guest_policy
    if gp.debug and not policy.allow_debug:
        raise PolicyError("snp.debug_guest", "the guest policy allows debugging (host can read guest memory)")
    if gp.migrate_ma and not policy.allow_migration_agent:
        raise PolicyError("snp.migration_agent", "the guest policy allows a migration agent")
    if policy.require_smt_off and (gp.smt or report.platform.smt_enabled):
        raise PolicyError("snp.smt_enabled", "SMT is allowed by the guest policy or enabled on the platform")
    if policy.require_single_socket and not gp.single_socket:
        raise PolicyError("snp.not_single_socket", "the guest policy does not require a single socket")
    if report.vmpl > policy.max_vmpl:
        raise PolicyError("snp.vmpl_too_high", f"report requested at VMPL {report.vmpl}, policy allows up to {policy.max_vmpl}")
    if policy.products and product not in policy.products:
        raise PolicyError("snp.product_not_allowed", f"product {product} is not in {policy.products}")
    if policy.measurements and not _in(report.measurement, policy.measurements):
        raise PolicyError("snp.measurement_mismatch", f"measurement {report.measurement.hex()} is not an allowed reference value")
    tcb = TcbVersion.decode(report.reported_tcb, product)
    minimum = policy.minimum_tcb.resolve(product, tcb.fmc is not None)
    if not tcb.at_least(minimum):
        raise PolicyError("snp.tcb_too_old", f"reported TCB {tcb.to_json()} is below the minimum {minimum.to_json()}")
    if report.guest_svn < policy.minimum_guest_svn:
        raise PolicyError("snp.guest_svn_too_old", f"guest SVN {report.guest_svn} < {policy.minimum_guest_svn}")
    if policy.minimum_firmware and (report.current_major, report.current_minor) < tuple(policy.minimum_firmware):
        raise PolicyError("snp.firmware_too_old", f"firmware {report.firmware} is older than {policy.minimum_firmware}")
    if policy.host_data and not _in(report.host_data, policy.host_data):
        raise PolicyError("snp.host_data_mismatch", "HOST_DATA is not an allowed value")
    if policy.id_key_digests and not _in(report.id_key_digest, policy.id_key_digests):
        raise PolicyError("snp.id_key_mismatch", "ID key digest is not allowed")
    if policy.author_key_digests and not _in(report.author_key_digest, policy.author_key_digests):
        raise PolicyError("snp.author_key_mismatch", "author key digest is not allowed")
    if policy.chip_ids and not _in(report.chip_id, policy.chip_ids):
        raise PolicyError("snp.chip_not_allowed", "this chip is not in the allowed list")
    if policy.report_data is not None and not hmac.compare_digest(report.report_data, bytes.fromhex(policy.report_data)):
        raise PolicyError("snp.report_data_mismatch", "REPORT_DATA differs from the expected value")
    return _checks(report, policy, product, tcb, minimum)


def _allowlist(values: list[str], what: str) -> str:
    return f"{what} in the allowed list ({len(values)})" if values else f"{what}: any"


def _checks(report: Report, policy: SnpPolicy, product: str | None, tcb: TcbVersion, minimum: TcbVersion) -> list[Check]:
    gp = report.guest_policy
    guest = [
        "debug " + ("allowed by policy" if gp.debug else "off"),
        "migration agent " + ("allowed by policy" if gp.migrate_ma else "off"),
        f"VMPL {report.vmpl} <= {policy.max_vmpl}",
    ]
    if policy.require_smt_off:
        guest.append("SMT off")
    checks = [
        Check("guest policy", ", ".join(guest)),
        Check(
            "launch measurement",
            f"{report.measurement.hex()[:16]}… "
            + ("matches a reference value" if policy.measurements else "(no reference values: any accepted)"),
        ),
        Check("minimum TCB", f"reported {_tcb_text(tcb)} >= minimum {_tcb_text(minimum)}"),
    ]
    if policy.minimum_guest_svn or policy.minimum_firmware:
        checks.append(
            Check("versions", f"guest SVN {report.guest_svn} >= {policy.minimum_guest_svn}, firmware {report.firmware}")
        )
    extra = [
        _allowlist(policy.host_data, "HOST_DATA") if policy.host_data else "",
        _allowlist(policy.chip_ids, "chip id") if policy.chip_ids else "",
        f"product {product} allowed" if policy.products else "",
        _allowlist(policy.id_key_digests, "ID key") if policy.id_key_digests else "",
        _allowlist(policy.author_key_digests, "author key") if policy.author_key_digests else "",
    ]
    if any(extra):
        checks.append(Check("launch identity", ", ".join(e for e in extra if e)))
    return checks


def _tcb_text(tcb: TcbVersion) -> str:
    return " ".join(f"{k}={v}" for k, v in tcb.to_json().items())
