"""The manifest: what a deployment is allowed to run, signed by its admins, kept as a hash chain.

Reference values for coordinator and workers, models, the sandbox profile and admin keys all
live here. The coordinator's evidence binds the digest of the current history *entry*, so a client
that verifies the coordinator also knows exactly which rules it enforces. Updates must be signed by
an admin key of the *previous* manifest; the history is append-only and every entry names the
entry digest of the one before it, so a fork or a rollback is visible. An entry's digest covers its
manifest and its predecessor, so returning to an earlier manifest is a new, distinct entry.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from veil.errors import ParseError, PolicyError, VerificationError

SIGNATURE_CONTEXT = b"veil/manifest-signature/v1"
ENTRY_CONTEXT = b"veil/manifest-entry/v1"
MAX_MANIFEST_BYTES = 1 << 20

TcbComponent = Literal["bootloader", "tee", "snp", "microcode", "fmc"]
Platform = Literal["sim-snp", "sev-snp", "sim-tdx", "tdx", "azure-snp-vtpm", "azure-tdx-vtpm", "sim-azure-snp", "sim-azure-tdx"]
# the hardware report inside an Azure CVM's HCL report is SEV-SNP's or TDX's, judged by their rules
SNP_PLATFORMS = ("sev-snp", "sim-snp", "azure-snp-vtpm", "sim-azure-snp")
TDX_PLATFORMS = ("tdx", "sim-tdx", "azure-tdx-vtpm", "sim-azure-tdx")
AZURE_PLATFORMS = ("azure-snp-vtpm", "azure-tdx-vtpm", "sim-azure-snp", "sim-azure-tdx")
TcbStatus = Literal[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields added after manifests were first signed: left out of the JSON while unset (None or
    # empty), so manifests written before them keep their canonical bytes and digests.
    omitted_while_unset: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in self.omitted_while_unset:
            if getattr(self, name) in (None, []):
                data.pop(name, None)
        return data


def _hex_values(values: list[str] | None, size: int) -> list[str] | None:
    """Lower-case hex of exactly ``size`` bytes each (ValueError otherwise)."""
    if values is None:
        return None
    out = []
    for v in values:
        h = v.lower().removeprefix("0x")
        if len(h) != 2 * size or any(c not in "0123456789abcdef" for c in h):
            raise ValueError(f"{v!r} is not {size} bytes of hex")
        out.append(h)
    return out


class SnpReference(_Strict):
    """SEV-SNP launch identity beyond the measurement; empty lists are not checked."""

    max_vmpl: int = Field(default=0, ge=0, le=3)  # reports requested at a higher VMPL are refused
    host_data: list[str] = Field(default_factory=list)  # HOST_DATA the host set at launch (32 bytes hex)
    chip_ids: list[str] = Field(default_factory=list)  # allowed CHIP_IDs (64 bytes hex)
    products: list[Literal["Milan", "Genoa", "Turin"]] = Field(default_factory=list)
    minimum_guest_svn: int = Field(default=0, ge=0)
    id_key_digests: list[str] = Field(default_factory=list)  # SHA-384 of the ID key (48 bytes hex)
    author_key_digests: list[str] = Field(default_factory=list)

    @field_validator("host_data", "chip_ids", "id_key_digests", "author_key_digests")
    @classmethod
    def _hex(cls, values: list[str], info: ValidationInfo) -> list[str] | None:
        return _hex_values(values, {"host_data": 32, "chip_ids": 64}.get(str(info.field_name), 48))


class TdxReference(_Strict):
    """Intel TDX registers and TCB rules beyond MRTD (``measurements``); None is not checked."""

    rtmr0: list[str] | None = None  # firmware configuration (TDVF)
    rtmr1: list[str] | None = None  # OS loader, kernel
    rtmr2: list[str] | None = None  # kernel command line, initrd
    rtmr3: list[str] | None = None  # runtime (application) measurements
    mr_config_id: list[str] | None = None  # set by the host at launch (48 bytes hex)
    mr_owner: list[str] | None = None
    mr_seam: list[str] | None = None  # the TDX module
    td_attributes_mask: int = 0  # (TD attributes & mask) must equal (expected & mask); debug is always refused unless allow_debug
    td_attributes_expected: int = 0
    xfam_mask: int = 0
    xfam_expected: int = 0
    min_tcb_status: TcbStatus = "SWHardeningNeeded"  # Intel's TCB status, from UpToDate (best) down
    allowed_advisory_ids: list[str] | None = None  # None: any; a list refuses every advisory not in it

    @field_validator("rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "mr_seam")
    @classmethod
    def _registers(cls, values: list[str] | None) -> list[str] | None:
        return _hex_values(values, 48)


class MaaReference(_Strict):
    """Microsoft Azure Attestation tokens a CVM must present (docs/attestation-tdx-azure.md).

    The token's signing certificate (from the MAA instance's ``/certs``, carried with the evidence)
    must chain to a root pinned here by SHA-256 fingerprint (or a trusted simulation root): the
    certificates are never accepted as given. ``issuers`` empty: any ``https://*.attest.azure.net``.
    """

    issuers: list[str] = Field(default_factory=list)
    signing_roots: list[str] = Field(default_factory=list)
    attestation_types: list[str] = Field(default_factory=lambda: ["sevsnpvm", "tdxvm"])
    require_azure_compliant: bool = True
    leeway_seconds: int = Field(default=60, ge=0, le=600)

    @field_validator("signing_roots")
    @classmethod
    def _roots(cls, values: list[str]) -> list[str] | None:
        return _hex_values([v.replace(":", "") for v in values], 32)


class AzureReference(_Strict):
    """What an Azure confidential VM must show beyond its hardware report (``snp``/``tdx``)."""

    pcrs: dict[int, list[str]] = Field(default_factory=dict)  # PCR index -> allowed SHA-256 values
    require_secure_boot: bool = True
    # the HCL runtime claims' user-data carries the report_data (hardware-signed); legacy (v0/v1)
    # attesters bind it through the TPM quote's nonce only
    require_user_data_binding: bool = True
    maa: MaaReference | None = None  # None: no MAA token required

    @field_validator("pcrs")
    @classmethod
    def _pcrs(cls, value: dict[int, list[str]]) -> dict[int, list[str]]:
        if any(not 0 <= i < 24 for i in value):
            raise ValueError("PCR indices are 0..23")
        return {i: _hex_values(vs, 32) or [] for i, vs in value.items()}


class GpuReference(_Strict):
    """What a worker's NVIDIA GPUs must show (docs/attestation-nvidia.md); also the NVIDIA policy.

    Production defaults: a driver RIM and a VBIOS RIM signed by NVIDIA's RIM root must come with
    the evidence and its measurements must equal their golden values; every NVIDIA-issued
    certificate of the GPU's and the RIMs' chains needs a signed OCSP status at most
    ``max_revocation_age_hours`` old. Empty allowlists allow any value.
    """

    allowed_platforms: list[str] = Field(default_factory=list)  # "nvidia-h100" (H100 and H200: GH100)
    allowed_driver_versions: list[str] = Field(default_factory=list)  # "550.90.07"
    allowed_vbios_versions: list[str] = Field(default_factory=list)  # "96.00.9F.00.01"
    allowed_rim_digests: list[str] = Field(default_factory=list)  # SHA-256 (hex) of allowed RIM documents
    # SPDM measurement block index -> allowed SHA-384 hex values, checked on top of the RIMs'
    reference_measurements: dict[int, list[str]] = Field(default_factory=dict)
    require_rims: bool = True
    require_revocation: bool = True
    max_revocation_age_hours: int = Field(default=168, ge=1, le=24 * 90)

    @field_validator("allowed_rim_digests")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str] | None:
        return _hex_values(values, 32)

    @field_validator("reference_measurements")
    @classmethod
    def _measurements(cls, value: dict[int, list[str]]) -> dict[int, list[str]]:
        return {i: _hex_values(vs, 48) or [] for i, vs in value.items()}


class ReferenceValues(_Strict):
    """What a coordinator or worker must measure to be trusted on one platform.

    ``measurements`` is the launch measurement (SNP MEASUREMENT, TDX MRTD); ``min_tcb`` is SNP's
    minimum TCB per component (unset components: the product's floor, docs/attestation-snp.md);
    ``snp`` and ``tdx`` hold what else that platform can be pinned to.
    """

    platform: Platform
    measurements: list[str] = Field(min_length=1)  # hex launch measurements (allowlist)
    allow_debug: bool = False
    min_tcb: dict[TcbComponent, int] = Field(default_factory=dict)
    require_gpu: bool = False  # a worker must present verified GPU evidence bound to its report
    gpu: GpuReference | None = None  # how GPU evidence is judged; without it GPU evidence is refused
    azure: AzureReference | None = None  # Azure CVMs: PCRs, secure boot, MAA
    snp: SnpReference | None = None
    tdx: TdxReference | None = None

    omitted_while_unset = ("snp", "tdx", "gpu", "azure")

    @model_validator(mode="after")
    def _per_platform(self) -> "ReferenceValues":
        if self.snp is not None and self.platform not in SNP_PLATFORMS:
            raise ValueError(f"snp reference values do not apply to {self.platform}")
        if self.min_tcb and self.platform not in SNP_PLATFORMS:
            raise ValueError(f"min_tcb (SEV-SNP TCB components) does not apply to {self.platform}")
        if self.tdx is not None and self.platform not in TDX_PLATFORMS:
            raise ValueError(f"tdx reference values do not apply to {self.platform}")
        if self.azure is not None and self.platform not in AZURE_PLATFORMS:
            raise ValueError(f"azure reference values do not apply to {self.platform}")
        if self.require_gpu and self.gpu is None:
            raise ValueError("require_gpu needs GPU reference values (gpu): GPUs are judged against them")
        return self


class ModelEntry(_Strict):
    """A model the workers serve; sealed weights name their digest and data key."""

    name: str
    engine: Literal["llama.cpp", "vllm", "transformers", "onnxruntime"] = "llama.cpp"
    sha256: str  # plaintext weights digest (hex): whole-file SHA-256, as model hubs publish it
    source: str | None = None  # sealed weights: path or URL
    sealed_sha256: str | None = None
    key_id: str | None = None
    # sealed weights: the segment-tree digest of the plaintext (veil.sealing.format.SegmentTree),
    # the pin the worker checks while it unseals on every core; `veil seal` prints it
    tree_sha256: str | None = None

    omitted_while_unset = ("tree_sha256",)


class ReleasePolicy(_Strict):
    """When the coordinator may release one secret (a model data key) to a worker.

    Conditions are over *verified* claims; every one must hold. Empty lists mean "no further
    restriction" beyond the worker reference values the worker already had to satisfy.
    """

    platforms: list[Platform] = Field(default_factory=list)
    measurements: list[str] = Field(default_factory=list)
    allow_debug: bool = False
    allow_simulated: bool = False  # real model keys never go to a simulated TEE unless said here
    min_tcb: dict[TcbComponent, int] = Field(default_factory=dict)
    require_gpu: bool = False
    gpu_platforms: list[str] = Field(default_factory=list)
    roles: list[Literal["worker"]] = ["worker"]  # pydantic copies mutable defaults
    # Azure Key Vault Secure Key Release grammar ({"version", "anyOf": [{"authority", "allOf"...}]}),
    # evaluated over the worker's verified MAA claims (veil.attest.azure.skr); a bare SKR document
    # given as a release policy means {"skr": document}
    skr: dict[str, Any] | None = None

    omitted_while_unset = ("skr",)

    @model_validator(mode="before")
    @classmethod
    def _bare_skr(cls, data: Any) -> Any:
        if isinstance(data, dict) and "anyOf" in data and "skr" not in data:
            return {"skr": data}
        return data

    @field_validator("skr")
    @classmethod
    def _skr(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from veil.attest.azure.skr import parse_policy

            try:
                parse_policy(value)  # a policy that cannot be read is refused with the manifest
            except ParseError as err:
                raise ValueError(f"{err.reason}: {err.message}") from None
        return value


class SandboxSettings(_Strict):
    """The engine's sandbox profile; the worker refuses to serve if it cannot enforce it."""

    profile: Literal["bubblewrap", "gvisor", "none"] = "bubblewrap"
    allow_gpu: bool = False


def sandbox_binding(settings: SandboxSettings) -> bytes:
    """What a worker's report_data binds about the sandbox it enforces (veil.attest.binding): empty
    for the default settings, else their canonical JSON — one value per profile, never the same."""
    if settings == SandboxSettings():
        return b""
    return rfc8785.dumps(settings.model_dump(mode="json"))


class TenantEntry(_Strict):
    """One tenant: its API key is stored only as SHA-256 (see docs/tenants-and-padding.md)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # SHA-256 of a secrets.token_urlsafe(32) key
    requests_per_minute: int = Field(ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class PaddingSettings(_Strict):
    """Length hiding: minimum size buckets (bytes); None switches that kind of padding off."""

    requests: int | None = Field(default=256, ge=16)  # client-side: inner request message
    responses: int | None = Field(default=256, ge=16)  # whole (non-streamed) inner responses
    stream_chunks: int | None = Field(default=512, ge=64)  # each chunk of a streamed (SSE) answer


class GatewaySettings(_Strict):
    """What the workers' OHTTP gateways accept. Attested with the rest, so clients can see it."""

    # Also serve ohttpy's older chunked variant (Azure confidential inferencing's client) on its own
    # route, /score. Its answers are padded like the rest, but it carries the inner status code on
    # the outer response, where relays see it (docs/protocol-ohttp.md). Off unless asked for.
    ohttpy_compat: bool = False
    # Replays are refused within this window; a client's Date must lie within it (RFC 9458 §6.5).
    replay_window_seconds: int = Field(default=60, ge=5, le=3600)


class Manifest(_Strict):
    version: Literal[1] = 1
    coordinator: list[ReferenceValues] = Field(min_length=1)
    workers: list[ReferenceValues] = Field(min_length=1)
    models: list[ModelEntry] = Field(default_factory=list)
    sandbox: SandboxSettings = SandboxSettings()
    admin_keys: list[str] = Field(min_length=1)  # Ed25519 public keys, raw hex
    # Fingerprints (SHA-256 of the ARK DER) of simulated roots this deployment accepts for workers.
    # Empty in production; a client shows SIMULATED for any deployment that lists one.
    trusted_simulation_roots: list[str] = Field(default_factory=list)
    # Release policy per secret key id; a secret without a policy is never released.
    release_policies: dict[str, ReleasePolicy] = Field(default_factory=dict)
    # X25519 public keys (hex) of admins who can restore the coordinator's state elsewhere.
    recovery_keys: list[str] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)  # client-visible settings
    # API-key tenants; empty means no key is required. Left out of the canonical form while
    # empty/None (like padding), so manifests written before these fields keep their digests.
    tenants: list[TenantEntry] = Field(default_factory=list)
    padding: PaddingSettings | None = None  # None: the defaults of PaddingSettings
    gateway: GatewaySettings | None = None  # None: the defaults of GatewaySettings
    # The public identity (Ed25519, hex) of the coordinator state these admins vouch for: the key
    # derived from the state seed that holds the HPKE, OHTTP and data keys. The coordinator refuses
    # a manifest naming another state, and clients check the attested identity against it, so
    # state swapped underneath by the host is refused, not served (docs/protocol.md §2b).
    coordinator_identity: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    omitted_while_unset = ("tenants", "padding", "gateway", "coordinator_identity")

    @field_validator("tenants")
    @classmethod
    def _unique_tenants(cls, tenants: list[TenantEntry]) -> list[TenantEntry]:
        if len({t.id for t in tenants}) != len(tenants) or len({t.key_sha256 for t in tenants}) != len(tenants):
            raise ValueError("tenant ids and key hashes must be unique")
        return tenants

    def canonical(self) -> bytes:
        """RFC 8785 canonical JSON: the bytes that are hashed and signed."""
        return rfc8785.dumps(self.model_dump(mode="json"))

    def digest(self) -> bytes:
        return hashlib.sha256(self.canonical()).digest()


class Signature(_Strict):
    key: str  # Ed25519 public key, hex
    signature: str  # hex


class SignedManifest(_Strict):
    """One history entry: a manifest, the entry digest of the one it follows, and admin signatures."""

    manifest: Manifest
    previous: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # None for the first entry
    signatures: list[Signature] = Field(min_length=1)

    @property
    def digest(self) -> bytes:
        """The entry digest: SHA-256 over the manifest digest and the previous entry's digest.

        It names this *position* in the history, so the same manifest set again later (a return to
        an earlier manifest) is a new entry with a new digest. Attestation binds this digest.
        """
        return entry_digest(self.manifest, self.previous)

    def signed_message(self) -> bytes:
        return signed_message(self.manifest, self.previous)

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any]) -> "SignedManifest":
        if isinstance(data, (bytes, str)) and len(data) > MAX_MANIFEST_BYTES:
            raise ParseError("manifest.too_large", "manifest exceeds 1 MiB")
        try:
            if isinstance(data, dict):
                return cls.model_validate(data)
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ParseError("manifest.malformed", _first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"


def _chained(context: bytes, manifest: Manifest, previous: str | None) -> bytes:
    prev = bytes.fromhex(previous) if previous else b""
    return context + manifest.digest() + len(prev).to_bytes(1, "big") + prev


def signed_message(manifest: Manifest, previous: str | None) -> bytes:
    """What admins sign: a context label, the manifest digest and the previous entry digest."""
    return _chained(SIGNATURE_CONTEXT, manifest, previous)


def entry_digest(manifest: Manifest, previous: str | None) -> bytes:
    """SHA-256(``veil/manifest-entry/v1`` ‖ manifest digest ‖ u8len(previous) ‖ previous)."""
    return hashlib.sha256(_chained(ENTRY_CONTEXT, manifest, previous)).digest()


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def sign_manifest(manifest: Manifest, keys: list[Ed25519PrivateKey], previous: str | None) -> SignedManifest:
    msg = signed_message(manifest, previous)
    sigs = [Signature(key=public_key_hex(k), signature=k.sign(msg).hex()) for k in keys]
    return SignedManifest(manifest=manifest, previous=previous, signatures=sigs)


def valid_signers(entry: SignedManifest, allowed_keys: list[str]) -> set[str]:
    """The allowed admin keys whose signature over this entry verifies."""
    msg = entry.signed_message()
    ok: set[str] = set()
    for sig in entry.signatures:
        if sig.key not in allowed_keys:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(sig.key)).verify(bytes.fromhex(sig.signature), msg)
        except (InvalidSignature, ValueError):
            continue
        ok.add(sig.key)
    return ok


def check_successor(previous: SignedManifest | None, entry: SignedManifest, *, root_keys: list[str] | None = None) -> None:
    """Refuse an entry that does not extend the chain or lacks an admin signature.

    The first manifest must be signed by one of its own admin keys and, when ``root_keys`` is given
    (the bootstrap admin key bound into a coordinator's or worker's measured launch data), by one
    of those too; every later one by an admin key of the manifest it replaces.
    """
    if previous is None:
        if entry.previous is not None:
            raise PolicyError("manifest.bad_chain", "the first manifest cannot name a predecessor")
        allowed = entry.manifest.admin_keys
        if root_keys is not None and not valid_signers(entry, root_keys):
            raise VerificationError(
                "manifest.not_bootstrap_signed",
                "the first manifest is not signed by the bootstrap admin key in the launch data",
            )
    else:
        if entry.previous != previous.digest.hex():
            raise PolicyError(
                "manifest.bad_chain",
                "update does not name the current head as its predecessor (to return to an earlier "
                "manifest, sign it again with the current head's digest as `previous`)",
            )
        allowed = previous.manifest.admin_keys
    if not valid_signers(entry, allowed):
        raise VerificationError("manifest.unsigned", "no valid signature by an admin key of the previous manifest")


def verify_history(entries: list[SignedManifest], *, root_keys: list[str] | None = None) -> bytes:
    """Check a whole history (hash chain and every signature); returns the head digest."""
    if not entries:
        raise PolicyError("manifest.empty_history", "the history holds no manifest")
    prev: SignedManifest | None = None
    for entry in entries:
        check_successor(prev, entry, root_keys=root_keys)
        prev = entry
    assert prev is not None
    return prev.digest
