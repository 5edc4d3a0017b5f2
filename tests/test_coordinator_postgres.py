"""Coordinator state sealed at rest in PostgreSQL: the SQLite flows on a real, private server, and
two coordinators sharing one database (high availability).

The test starts its own PostgreSQL from the distribution's binaries (scripts/install-test-deps.sh
installs them): initdb and pg_ctl as the ``postgres`` user (the server refuses to run as root) in a
temporary directory, listening only on a Unix socket in that directory. Without the binaries it is
skipped, unless VEIL_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from deployment_fixtures import launched_attester, make_manifest
from veil import admin
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.coordinator.store import Store
from veil.errors import PolicyError, VeilError
from veil.manifest import ModelEntry, ReleasePolicy, public_key_hex, sign_manifest

REQUIRE = os.environ.get("VEIL_REQUIRE_POSTGRES") == "1"
DATA_KEY = os.urandom(32)


def _pg_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps them off PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"VEIL_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(f"{reason} (run scripts/install-test-deps.sh; VEIL_REQUIRE_POSTGRES=1 makes this a failure)")


class PgServer:
    """A throw-away PostgreSQL cluster on a Unix socket in a private directory."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="veil-pg-"))
        self.data = self.dir / "data"
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.dir.chmod(0o700)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.dir)

    def start(self) -> None:
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
        opts = f"-k {self.dir} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        done = self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start"
        )
        if done.returncode:
            log = (self.dir / "server.log").read_text(errors="replace") if (self.dir / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stderr[-1000:]} {log[-2000:]}")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.dir}"

    def create_database(self) -> str:
        import psycopg

        name = "veil_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host=str(self.dir), user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, url: str, sql: str, *params: object) -> list[tuple]:
        import psycopg

        with psycopg.connect(
            host=str(self.dir), user="postgres", dbname=url.split("?")[0].rsplit("/", 1)[-1], autocommit=True
        ) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def pg():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable('the psycopg driver is not installed (pip install "psycopg[binary]")')
    bindir = _pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` user to run the server as")
        if shutil.which("runuser") is None:
            _unavailable("running as root and `runuser` is missing")
    server = PgServer(bindir)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        _unavailable(f"the private PostgreSQL server did not start: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    SimPlatform.create(d)
    return d


ADMIN = Ed25519PrivateKey.generate()  # the bootstrap admin every coordinator here is launched with


@pytest.fixture(scope="module")
def attester(sim_dir):
    """One simulated chip for the module: its measurement (a hash of the installed veil code) and
    so its sealing key are computed once, even if the source tree changes while the tests run."""
    return launched_attester(sim_dir, ADMIN)


@pytest.fixture
def db_url(pg):
    url = pg.create_database()
    yield url


class Coordinator:
    """One coordinator process's worth of state on the shared database, reachable as httpx."""

    def __init__(self, attester, db_url, platform_key=None) -> None:
        self.attester = attester
        self.store = Store.from_url(db_url)
        self.state = CoordinatorState.open(self.store, platform_key or self.attester.sealing_key(), public_key_hex(ADMIN))
        self.http = TestClient(create_app(self.state, self.attester), base_url="http://coord")

    def read(self, path: str, signed) -> dict:
        return admin.signed_read(self.policy(signed), ADMIN, path, http=self.http)

    def close(self) -> None:
        self.http.close()
        self.store.engine.dispose()

    def policy(self, signed) -> ClientPolicy:
        return ClientPolicy(
            coordinator_url="http://coord",
            coordinator=signed.manifest.coordinator,
            manifest_digests=[signed.digest.hex()],
            trust_simulated=True,
            simulation_roots=signed.manifest.trusted_simulation_roots,
        )


def _manifest(sim_dir, admin_key, coord, previous=None, n=0):
    m = make_manifest(
        sim_dir, admin_key, coord.attester.measurement.hex(), settings={"n": n}, coordinator_identity=coord.state.identity
    )
    m = m.model_copy(
        update={
            "models": [ModelEntry(name="sealed-model", sha256="11" * 32, key_id="model-key")],
            "release_policies": {"model-key": ReleasePolicy(allow_simulated=True)},
        }
    )
    return sign_manifest(m, [admin_key], previous)


def test_store_is_postgresql(db_url) -> None:
    store = Store.from_url(db_url)
    try:
        assert store.engine.dialect.name == "postgresql"
        assert store.get_meta("nothing") is None
    finally:
        store.engine.dispose()


def test_restart_restores_keys_manifests_and_secrets(sim_dir, attester, db_url) -> None:
    a = ADMIN
    first = Coordinator(attester, db_url)
    assert not first.state.locked
    signed = _manifest(sim_dir, a, first)
    assert first.http.post("/v1/manifest", content=signed.model_dump_json()).status_code == 200
    second = _manifest(sim_dir, a, first, previous=signed.digest.hex(), n=1)
    assert first.http.post("/v1/manifest", content=second.model_dump_json()).status_code == 200
    admin.put_secret(first.policy(second), a, "model-key", DATA_KEY, http=first.http)
    keys_before = first.http.get("/.well-known/ohttp-gateway").content
    first.close()

    again = Coordinator(attester, db_url)  # restart: same measured code, same (simulated) chip
    try:
        assert not again.state.locked
        assert again.http.get("/.well-known/ohttp-gateway").content == keys_before
        assert [e.digest for e in again.state.history] == [signed.digest, second.digest]
        assert again.state.secrets == {"model-key": DATA_KEY}
        assert again.read("/v1/secrets", second) == {"key_ids": ["model-key"]}
        events = [r["event"] for r in again.read("/v1/audit", second)["records"]]
        assert events.count("manifest.set") == 2 and "secret.put" in events
    finally:
        again.close()


def test_nothing_secret_is_stored_in_the_clear(sim_dir, attester, db_url, pg) -> None:
    a = ADMIN
    dep = Coordinator(attester, db_url)
    try:
        signed = _manifest(sim_dir, a, dep)
        dep.http.post("/v1/manifest", content=signed.model_dump_json())
        admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)
        ohttp_private = dep.state.ohttp_keys.get(1).private_bytes()
    finally:
        dep.close()
    dumped = b""
    for table, col in (
        ("veil_meta", "value"),
        ("veil_secrets", "sealed_value"),
        ("veil_key_generations", "sealed"),
        ("veil_audit_log", "sealed"),
    ):
        for (blob,) in pg.execute(db_url, f"select {col} from {table}"):
            dumped += bytes(blob)
    assert dumped
    for secret in (DATA_KEY, ohttp_private, DATA_KEY.hex().encode(), ohttp_private.hex().encode()):
        assert secret not in dumped


def test_tampered_row_is_refused_on_restart(sim_dir, attester, db_url, pg) -> None:
    a = ADMIN
    dep = Coordinator(attester, db_url)
    signed = _manifest(sim_dir, a, dep)
    dep.http.post("/v1/manifest", content=signed.model_dump_json())
    admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)
    dep.close()
    ((blob,),) = pg.execute(db_url, "select sealed_value from veil_secrets")
    blob = bytes(blob)
    pg.execute(db_url, "update veil_secrets set sealed_value = %s", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(VeilError) as exc:
        Coordinator(attester, db_url)
    assert exc.value.reason == "state.tampered"


def test_moved_row_is_refused(sim_dir, attester, db_url, pg) -> None:
    """A sealed secret copied under another key id does not open: the row's name is bound in."""
    a = ADMIN
    dep = Coordinator(attester, db_url)
    signed = _manifest(sim_dir, a, dep)
    dep.http.post("/v1/manifest", content=signed.model_dump_json())
    admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)
    dep.close()
    pg.execute(
        db_url,
        "insert into veil_secrets (key_id, sealed_value, created_at) "
        "select 'other-key', sealed_value, created_at from veil_secrets",
    )
    with pytest.raises(VeilError) as exc:
        Coordinator(attester, db_url)
    assert exc.value.reason == "state.tampered"


def test_two_coordinators_share_the_database(sim_dir, attester, db_url) -> None:
    """HA: a second coordinator (same measured code and platform key) on the same database opens
    the same sealed state, and sees what the first wrote once it reopens."""
    a = ADMIN
    one = Coordinator(attester, db_url)
    two = None
    try:
        signed = _manifest(sim_dir, a, one)
        assert one.http.post("/v1/manifest", content=signed.model_dump_json()).status_code == 200

        two = Coordinator(attester, db_url)
        assert not two.state.locked
        assert [e.digest for e in two.state.history] == [signed.digest]
        # the same keys: clients and workers may talk to either coordinator
        assert two.http.get("/.well-known/ohttp-gateway").content == one.http.get("/.well-known/ohttp-gateway").content
        assert two.state.hpke_key.private_bytes_raw() == one.state.hpke_key.private_bytes_raw()

        second = _manifest(sim_dir, a, one, previous=signed.digest.hex(), n=1)
        assert one.http.post("/v1/manifest", content=second.model_dump_json()).status_code == 200
        admin.put_secret(one.policy(second), a, "model-key", DATA_KEY, http=one.http)

        # a stale coordinator catches up from the database before writing, so a fork is refused
        fork = _manifest(sim_dir, a, one, previous=signed.digest.hex(), n=2)
        with pytest.raises(PolicyError) as exc:
            two.state.append_manifest(fork)
        assert exc.value.reason == "manifest.bad_chain"
        assert [e.digest for e in two.state.history] == [signed.digest, second.digest]
        assert two.state.secrets == {"model-key": DATA_KEY}  # seen without a restart

        two.close()
        two = Coordinator(attester, db_url)  # reopen: everything the first wrote is there
        assert [e.digest for e in two.state.history] == [signed.digest, second.digest]
        assert two.state.secrets == {"model-key": DATA_KEY}
        assert two.http.get("/v1/manifest").json() == second.model_dump(mode="json")
    finally:
        one.close()
        if two is not None:
            two.close()


def test_other_platform_key_is_locked(sim_dir, attester, db_url) -> None:
    """A coordinator on another machine (another platform key) sharing the DB stays locked."""
    a = ADMIN
    one = Coordinator(attester, db_url)
    signed = _manifest(sim_dir, a, one)
    one.http.post("/v1/manifest", content=signed.model_dump_json())
    one.close()
    other = Coordinator(attester, db_url, platform_key=os.urandom(32))
    try:
        assert other.state.locked and other.state.history == []
        assert other.http.get("/v1/secrets").status_code == 403
        assert other.http.get("/v1/manifest/history").json() == [signed.model_dump(mode="json")]  # public, even locked
    finally:
        other.close()
