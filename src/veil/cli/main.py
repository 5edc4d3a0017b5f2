"""`veil`: run a confidential inference deployment, verify it, and talk to it encrypted."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from veil.cli import admin as admin_cli
from veil.cli import collateral as collateral_cli
from veil.cli import evidence as evidence_cli
from veil.cli import manifest as manifest_cli
from veil.cli.seal import seal_command
from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.attest.attester import Attester

app = typer.Typer(
    help=(
        "Veil: confidential AI inference. A client verifies hardware attestation before it sends "
        "anything; prompts and responses are encrypted end to end (OHTTP) to attested machines.\n\n"
        "Quick start: `veil up` starts a local deployment on a SIMULATED TEE; then `veil verify`, "
        '`veil chat "hello"`, or `veil proxy` for any OpenAI client.'
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(evidence_cli.app, name="evidence")
app.add_typer(manifest_cli.app, name="manifest")
app.add_typer(collateral_cli.app, name="collateral")
app.add_typer(admin_cli.secret_app, name="secret")
app.command("seal")(seal_command)
app.add_typer(admin_cli.tenant_app, name="tenant")
app.command("audit")(admin_cli.audit)
app.command("workers")(admin_cli.workers)
app.command("recover")(admin_cli.recover)

console = Console()
err_console = Console(stderr=True)

PolicyOpt = typer.Option(None, "--policy", help="Client policy JSON (default: the local `veil up` deployment's).")
StateDirOpt = typer.Option(None, "--state-dir", help="State directory (default: $VEIL_STATE_DIR or ~/.veil).")


PlatformOpt = typer.Option(
    "sim-snp",
    "--platform",
    help="TEE this process runs in: sev-snp, tdx, azure-snp-vtpm, azure-tdx-vtpm, or a SIMULATED twin "
    "(sim-snp, sim-tdx, sim-azure-snp, sim-azure-tdx) for development.",
)
SimDirOpt = typer.Option(None, "--sim-dir", help="Simulated platform directory (sim-* platforms).")
LaunchDataOpt = typer.Option(
    None,
    "--sim-launch-data",
    help="Simulated platforms: what the host sets at launch, hex: HOST_DATA (sim-snp, 32 bytes) or "
    "MRCONFIGID (sim-tdx, 48 bytes). On hardware the host sets these when it launches the VM.",
)


SourceOpt = typer.Option(
    "auto",
    "--evidence-source",
    help="Where hardware evidence comes from: auto (configfs-tsm, /dev/sev-guest) or coco-aa (the Confidential "
    "Containers Attestation Agent of a Kata pod, see --aa-url).",
)
AgentOpt = typer.Option("http://127.0.0.1:8006", "--aa-url", help="The Attestation Agent's REST server (coco-aa).")


def _attester(
    platform: str,
    sim_dir: Optional[Path],
    launch_data: Optional[str] = None,
    source: str = "auto",
    aa_url: str = "http://127.0.0.1:8006",
) -> Attester:
    from veil.attest import registry
    from veil.errors import ParseError

    if source not in ("auto", "coco-aa"):
        raise ParseError("cli.bad_option", "--evidence-source is auto or coco-aa")
    try:
        data = bytes.fromhex(launch_data) if launch_data is not None else None
    except ValueError:
        raise ParseError("attest.bad_launch_data", "--sim-launch-data must be hex") from None
    config = registry.AttesterConfig(sim_dir=sim_dir, launch_data=data, source=source, aa_url=aa_url)
    return registry.attester(platform, config)


def _fail(err: VeilError, as_json: bool = False) -> None:
    from veil.client.report import render_failure

    if as_json:
        print(json.dumps({"verdict": "reject", "reason": err.reason, "message": err.message}))
    else:
        render_failure(err, err_console)
    raise typer.Exit(1)


def _state_dir(path: Optional[Path]) -> Path:
    from veil.client.policy import DEFAULT_STATE_DIR

    return (path or DEFAULT_STATE_DIR).resolve()


@app.command()
def up(
    state_dir: Optional[Path] = StateDirOpt,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    coordinator_port: int = typer.Option(8470, help="Coordinator port."),
    worker_port: int = typer.Option(8471, help="Worker OHTTP gateway port."),
    sandbox: str = typer.Option("bubblewrap", help="Engine sandbox profile: bubblewrap, gvisor or none (dev only)."),
    model: Optional[Path] = typer.Option(None, help="GGUF model (default: the bundled SmolLM2-135M-Instruct)."),
    demo: bool = typer.Option(False, "--demo", help="After start-up, verify and run one streamed chat."),
    detach: bool = typer.Option(False, "--detach", help="Start, write the policy, and return (for scripts)."),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        help="Worker replicas, each with its own sandboxed engine; more than one puts HAProxy on the gateway port (least connections, health checks).",
    ),
    coordinators: int = typer.Option(
        1,
        "--coordinators",
        min=1,
        help="Coordinator replicas sharing sealed state in PostgreSQL (--db), behind HAProxy on the coordinator port.",
    ),
    db: Optional[str] = typer.Option(
        None,
        "--db",
        envvar="VEIL_DB",
        help="Coordinator database URL (default: SQLite in the state directory; required as postgresql+psycopg://... with --coordinators > 1).",
    ),
    reregister_seconds: float = typer.Option(60.0, help="How often workers re-attest; a newer manifest reaches them then."),
    gateway_processes: int = typer.Option(
        1,
        "--gateway-processes",
        min=0,
        help="Gateway processes per worker, sharing its port, keys, replay cache and tenant limits (0: one per core the worker may use, within its cgroup CPU quota).",
    ),
    sim_gpu: bool = typer.Option(
        False,
        "--sim-gpu",
        help="Give every worker a SIMULATED H100 (SPDM report, chain, "
        "signed RIMs, OCSP) that the manifest requires and the coordinator verifies.",
    ),
    platform: str = typer.Option(
        "sim-snp",
        "--platform",
        help="The SIMULATED TEE to run on: sim-snp (SEV-SNP reports), sim-tdx (TDX quotes), "
        "sim-azure-snp or sim-azure-tdx (Azure confidential VMs: vTPM, HCL report, a simulated MAA token; "
        "the model key goes by an Azure Key Vault SKR policy).",
    ),
) -> None:
    """Start a local deployment (coordinator, worker, engine) on a SIMULATED TEE (--platform).

    With --workers/--coordinators above 1, the replicas sit behind Debian's HAProxy
    (deploy/haproxy/balancer.cfg) and the client policy names the balancer (docs/scale-out.md)."""
    from veil.localdeploy import LocalDeployment

    # Ctrl-C and SIGTERM stop everything, even when we inherited SIGINT as ignored (a shell
    # starting us in the background does that, and Python then installs no handler of its own).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    try:
        deployment = LocalDeployment(
            _state_dir(state_dir),
            host=host,
            coordinator_port=coordinator_port,
            worker_port=worker_port,
            sandbox=sandbox,
            model_path=model,
            workers=workers,
            coordinators=coordinators,
            db_url=db,
            reregister_seconds=reregister_seconds,
            gateway_processes=gateway_processes,
            sim_gpu=sim_gpu,
            platform=platform,
        )
    except VeilError as err:
        _fail(err)
    try:
        with console.status("starting Veil") as status:

            def progress(msg: str) -> None:
                status.update(msg)
                console.print(f"[dim]·[/] {msg}")

            deployment.start(progress=progress)
    except VeilError as err:
        deployment.stop()
        _fail(err)
    except KeyboardInterrupt:
        deployment.stop()
        raise typer.Exit(130)
    console.print(
        f"[bold green]Veil is up[/] (SIMULATED TEE, {deployment.platform}). Coordinator {deployment.coordinator_url}, "
        f"gateway {deployment.gateway_url}"
        + (f" (HAProxy in front of {workers} worker(s) and {coordinators} coordinator(s))" if deployment.balancer else "")
        + ".\n"
        "  veil verify              # check the attestation\n"
        '  veil chat "hello"        # a verified, encrypted, streamed chat\n'
        "  veil proxy               # plain OpenAI endpoint on 127.0.0.1:8472 for any OpenAI client"
    )
    if detach:
        for proc in deployment.processes:
            proc.returncode = 0  # leave them running
        return
    try:
        if demo:
            _demo(deployment.policy_path)
        console.print("[dim]Serving. Press Ctrl-C to stop.[/]")
        reported: set[int] = set()
        while deployment.serving():
            for proc in deployment.processes:  # with replicas a dead one is routed around: say so
                if proc.poll() is not None and proc.pid not in reported:
                    reported.add(proc.pid)
                    err_console.print(
                        f"[yellow]a replica exited (pid {proc.pid}, status {proc.returncode}); serving on the others[/]"
                    )
            time.sleep(0.5)
        console.print("[red]a Veil process exited; stopping[/]")
    except KeyboardInterrupt:
        console.print("\n[dim]stopping…[/]")
    finally:
        deployment.stop()


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _demo(policy_path: Path) -> None:
    _verify(policy_path, as_json=False)
    prompt = "In one sentence, why does encryption matter for AI prompts?"
    console.print(f"\n[bold]you:[/] {prompt}")
    _chat(prompt, policy_path, stream=True, max_tokens=80, system=None, quiet=True, api_key=None)


@app.command()
def coordinator(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8470),
    platform: str = PlatformOpt,
    sim_dir: Optional[Path] = SimDirOpt,
    sim_launch_data: Optional[str] = LaunchDataOpt,
    evidence_source: str = SourceOpt,
    aa_url: str = AgentOpt,
    db: Optional[str] = typer.Option(
        None,
        envvar="VEIL_DB",
        help="State database URL (sqlite:///path or postgresql://...); state is sealed at rest. "
        "Without it, state lives in memory only. A URL with a password only from $VEIL_DB or --db-file, never argv.",
    ),
    db_file: Optional[Path] = typer.Option(None, help="Read the database URL (it may hold a password) from this file."),
    key_rotation_seconds: float = typer.Option(86400.0, help="Start a new OHTTP key generation this often."),
    key_promotion_seconds: float = typer.Option(
        90.0,
        help="A new key generation goes to workers this long before clients are told to use it "
        "(keep it above the workers' --reregister-seconds).",
    ),
    key_grace_seconds: float = typer.Option(900.0, help="Keep the previous key generation this long after a rotation."),
    challenge_pool: int = typer.Option(10_000, help="Open worker challenges kept at most (fairly shared by source)."),
    attestations_per_second: float = typer.Option(20.0, help="Attestations (hardware reports) per second per source."),
    attestation_burst: float = typer.Option(50.0, help="... and the burst a source may spend at once."),
    challenges_per_second: float = typer.Option(5.0, help="Worker and admin challenges per second per source."),
    challenge_burst: float = typer.Option(20.0, help="... and the burst a source may spend at once."),
) -> None:
    """Run the coordinator: attestation service and key broker.

    The bootstrap admin key (the only key that may sign the first manifest) comes from the measured
    launch data: HOST_DATA on SEV-SNP, --sim-launch-data on the simulated platforms.
    """
    from veil.attestation import bootstrap_key
    from veil.coordinator.app import Limits, create_app
    from veil.coordinator.keys import Rotation
    from veil.coordinator.state import CoordinatorState
    from veil.coordinator.store import Store
    from veil.httpserver import serve

    try:
        source = ctx.get_parameter_source("db")  # typer's own click: compare by name
        url = _database_url(db, db_file, from_argv=getattr(source, "name", "") == "COMMANDLINE")
        attester = _attester(platform, sim_dir, sim_launch_data, evidence_source, aa_url)
        rotation = Rotation(every=key_rotation_seconds, promotion=key_promotion_seconds, grace=key_grace_seconds)
        bootstrap = bootstrap_key(attester.launch_data())
        state = (
            CoordinatorState.open(Store.from_url(url), attester.sealing_key(), bootstrap, rotation=rotation)
            if url
            else CoordinatorState.generate(bootstrap, rotation=rotation)
        )
    except VeilError as err:
        _fail(err)
    if state.locked:
        err_console.print("[yellow]stored state is sealed to another platform: locked until `veil recover`[/]")
    if bootstrap is None:
        err_console.print("[yellow]no bootstrap admin key in the launch data: no first manifest will be accepted[/]")
    limits = Limits(
        attestations_per_second=attestations_per_second,
        attestation_burst=attestation_burst,
        challenges_per_second=challenges_per_second,
        challenge_burst=challenge_burst,
        challenge_pool=challenge_pool,
    )
    app_ = create_app(state, attester, limits=limits)
    serve(app_, host=host, port=port)  # slow clients timed out, connections capped (veil.httpserver)


def _database_url(db: Optional[str], db_file: Optional[Path], *, from_argv: bool) -> Optional[str]:
    """The state database URL from --db, --db-file or $VEIL_DB; a password is refused on the command
    line (every local user can read another process's argv)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if db_file is not None:
        try:
            return db_file.read_text().strip()
        except OSError as exc:
            raise VeilError("cli.unreadable_input", f"{db_file}: {exc.strerror}") from None
    if db and from_argv:
        try:
            password = make_url(db).password
        except ArgumentError:
            raise VeilError("cli.bad_option", "--db is not a database URL") from None
        if password is not None:
            raise VeilError(
                "cli.secret_in_argv",
                "the database URL holds a password: pass it in $VEIL_DB or a --db-file, never on the command line",
            )
    return db or None


@app.command()
def worker(
    coordinator: str = typer.Option("http://127.0.0.1:8470", "--coordinator", help="Coordinator URL."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8471),
    platform: str = PlatformOpt,
    sim_dir: Optional[Path] = SimDirOpt,
    sim_launch_data: Optional[str] = LaunchDataOpt,
    evidence_source: str = SourceOpt,
    aa_url: str = AgentOpt,
    model: Optional[Path] = typer.Option(None, help="Plaintext GGUF weights, when the manifest's model is not sealed."),
    model_name: Optional[str] = typer.Option(None, help="Which manifest model to serve (default: the first)."),
    run_dir: Path = typer.Option(Path("/run/veil-worker"), help="Directory for the engine's socket (tmpfs)."),
    allow_unsandboxed: bool = typer.Option(False, help="Dev only: accept a manifest sandbox profile 'none'."),
    gpu: str = typer.Option(
        "auto",
        help="GPU evidence: auto (NVML, when a CC-mode GPU is present), none, required, "
        "or sim (the SIMULATED H100 in --sim-gpu-dir).",
    ),
    sim_gpu_dir: Optional[Path] = typer.Option(None, "--sim-gpu-dir", help="The SIMULATED H100 of `veil up --sim-gpu`."),
    reregister_seconds: float = typer.Option(60.0, help="Re-attest this often; a newer manifest takes effect then."),
    gateway_processes: int = typer.Option(
        1,
        "--gateway-processes",
        min=0,
        help="Gateway processes sharing this worker's port, keys, replay cache and tenant limits (0: one per core the worker may use, within its cgroup CPU quota).",
    ),
) -> None:
    """Run a worker: attest, receive keys, unseal weights, start the sandboxed engine, serve OHTTP."""
    from veil.worker.serve import WorkerConfig, run_worker

    config = WorkerConfig(
        coordinator,
        host,
        port,
        model,
        run_dir,
        allow_unsandboxed,
        model_name,
        gpu,
        reregister_seconds,
        sim_gpu_dir,
        gateway_processes,
    )
    try:
        run_worker(config, _attester(platform, sim_dir, sim_launch_data, evidence_source, aa_url))
    except VeilError as err:
        _fail(err)


@app.command()
def verify(
    policy: Optional[Path] = PolicyOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Verify the deployment's attestation and manifest; print a report (exit 1 if refused)."""
    _verify(policy, as_json)


def _verify(policy: Optional[Path], as_json: bool) -> None:
    from veil.client.policy import load_with_log
    from veil.client.report import render_verification
    from veil.client.verify import verify_coordinator

    try:
        client_policy, log = load_with_log(policy)
        attested = verify_coordinator(client_policy, manifest_log=log)
    except VeilError as err:
        _fail(err, as_json)
    if as_json:
        print(json.dumps(attested.to_json(), indent=2))
    else:
        render_verification(attested, console)


@app.command()
def chat(
    prompt: str = typer.Argument(..., help="What to ask; '-' reads it from stdin (keeps it out of the process list)."),
    policy: Optional[Path] = PolicyOpt,
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream tokens as they arrive."),
    max_tokens: int = typer.Option(256, help="Maximum tokens in the answer."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not print the verification summary."),
    api_key_file: Optional[Path] = typer.Option(
        None,
        "--api-key-file",
        help="File holding the tenant API key (default: $VEIL_API_KEY). Keys never go on "
        "the command line, where every local user can read them.",
    ),
) -> None:
    """Verify, then send one encrypted chat message and print the answer."""
    if prompt == "-":
        prompt = sys.stdin.read().strip()
    if not prompt:
        err_console.print("[red]empty prompt[/]")
        raise typer.Exit(2)
    _chat(
        prompt,
        policy,
        stream=stream,
        max_tokens=max_tokens,
        system=system,
        quiet=quiet,
        api_key=_secret(api_key_file, "VEIL_API_KEY"),
    )


def _secret(path: Optional[Path], envvar: str) -> Optional[str]:
    """A key from a file (first line) or the environment: never from argv."""
    if path is not None:
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            err_console.print(f"[red]cannot read {path}: {exc.strerror}[/]")
            raise typer.Exit(2)
    return os.environ.get(envvar) or None


def _chat(
    prompt: str,
    policy: Optional[Path],
    *,
    stream: bool,
    max_tokens: int,
    system: Optional[str],
    quiet: bool,
    api_key: Optional[str],
) -> None:
    import openai

    from veil.client.sdk import Client

    try:
        client = Client(policy, api_key=api_key)
    except VeilError as err:
        _fail(err)
    attestation = client.attestation
    label = "SIMULATED TEE" if attestation.simulated else attestation.verdict.claims.platform  # type: ignore[union-attr]
    if not quiet:
        err_console.print(f"[dim]verified ({label}) in {attestation.elapsed_ms:.1f} ms; encrypted with OHTTP[/]")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    models = attestation.manifest.manifest.models if attestation.manifest else []
    model = models[0].name if models else "default"
    console.print("[bold]veil:[/] ", end="")
    try:
        _print_answer(client, model, messages, max_tokens, stream)
    except openai.APIStatusError as exc:
        console.print()
        err_console.print(f"[red]refused by the deployment[/] (HTTP {exc.status_code}): {exc.message}")
        raise typer.Exit(1)
    except VeilError as err:
        console.print()
        _fail(err)
    if attestation.simulated:
        err_console.print("[yellow]SIMULATED TEE: not protected by hardware.[/]")
    client.close()


def _print_answer(client: Any, model: str, messages: list[Any], max_tokens: int, stream: bool) -> None:
    if stream:
        for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                console.print(chunk.choices[0].delta.content, end="", soft_wrap=True, highlight=False, markup=False)
        console.print()
    else:
        resp = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens)
        console.print(resp.choices[0].message.content, highlight=False, markup=False)


@app.command()
def proxy(
    policy: Optional[Path] = PolicyOpt,
    host: str = typer.Option("127.0.0.1", help="Listen address (keep it local: traffic to the proxy is plain)."),
    port: int = typer.Option(8472, help="Listen port."),
    allowed_host: list[str] = typer.Option(
        [], "--allowed-host", help="Another Host name to answer to (loopback names always are); others are refused."
    ),
    token_file: Optional[Path] = typer.Option(
        None,
        "--token-file",
        help="Require 'Authorization: Bearer <token>' (an OpenAI client's api_key) with the "
        "token in this file, created (mode 0600) if absent. Or set $VEIL_PROXY_TOKEN.",
    ),
    api_key_file: Optional[Path] = typer.Option(
        None, "--api-key-file", help="Tenant API key to send inside the encryption (default: $VEIL_API_KEY)."
    ),
    reverify_seconds: float = typer.Option(60.0, help="Re-verify the deployment this often (and on gateway refusals)."),
) -> None:
    """A local plain OpenAI endpoint: encrypts every request to the deployment it keeps verifying.

    It stops forwarding (HTTP 503 with the reason) as soon as the deployment no longer verifies;
    its root (http://127.0.0.1:8472/) is a page showing what it verified, with a chat through it;
    GET /veil/verification is the same as JSON: the latest verification and its time, or the refusal.
    """
    from veil.client.freshness import AsyncReverifier
    from veil.httpserver import serve
    from veil.client.policy import load_with_log
    from veil.client.proxy import create_proxy_app
    from veil.client.verify import verify_coordinator

    try:
        client_policy, log = load_with_log(policy)
        attested = verify_coordinator(client_policy, manifest_log=log)
    except VeilError as err:
        _fail(err)
    token = _proxy_token(token_file)
    verifier = AsyncReverifier(client_policy, manifest_log=log, interval=reverify_seconds)
    app_ = create_proxy_app(
        verifier, allowed_hosts=[host, *allowed_host], token=token, tenant_key=_secret(api_key_file, "VEIL_API_KEY")
    )
    sim = " (SIMULATED TEE)" if attested.simulated else ""
    console.print(
        f"verified{sim}; OpenAI endpoint at http://{host}:{port}/v1 — every request is encrypted; "
        f"re-verified every {reverify_seconds:g} s; what was verified: http://{host}:{port}/"
    )
    serve(app_, host=host, port=port)  # slow clients timed out, connections capped (veil.httpserver)


def _proxy_token(path: Optional[Path]) -> Optional[str]:
    """The per-proxy bearer token: from the file (made with a fresh token if absent) or $VEIL_PROXY_TOKEN."""
    if path is None:
        return os.environ.get("VEIL_PROXY_TOKEN") or None
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        console.print(f"proxy token written to {path} (use it as the OpenAI api_key)")
    return _secret(path, "VEIL_PROXY_TOKEN")


def main() -> None:  # pragma: no cover
    app(prog_name="veil")


if __name__ == "__main__":  # pragma: no cover
    main()
