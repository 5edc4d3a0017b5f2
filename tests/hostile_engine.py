"""A hostile "engine": tries every way out of the sandbox it can think of, and says how it went.

Started by tests/sandbox_harness.py exactly as the worker starts a real engine (``EngineProcess``
runs ``python hostile_engine.py --socket S --n-ctx N ...`` inside the sandbox), or, for the
control run, as a plain process with none of the protections. Standard library only. It makes
its attempts first, then serves HTTP on its Unix socket, the one channel it is meant to have:

* ``GET /health`` — 200 once the attempts are done;
* ``GET /report`` — ``{"attempts": [{"name", "succeeded", "detail", "judged_by"}, ...]}``;
  ``succeeded`` is the engine's own view; attempts whose effect only the host can judge (files
  left behind, a daemon, what the worker kept of its output) say ``"judged_by": "host"``;
* ``POST /memory`` — allocates past its memory ceiling in a child and reports; a sandbox killed
  for it is contained too (the host sees the connection drop).

``--serve-only`` skips the attempts (the positive test). It never sends traffic anywhere real:
remote addresses are only ``connect()``-ed, with a timeout, and it never writes a sysctl (it
only opens one for writing).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import http.server
import json
import os
import resource
import signal
import socket
import socketserver
import stat
import sys
import time
from collections.abc import Callable

_libc = ctypes.CDLL(None, use_errno=True)
_SYS = {
    "io_uring_setup": 425,
    "ptrace": 101,
    "unshare": 272,
    "bpf": 321,
    "keyctl": 250,
    "perf_event_open": 298,
    "process_vm_readv": 310,
    "mount": 165,
}  # x86_64 numbers
MIB = 1 << 20

# Attempts harmless to run *outside* a sandbox, as root: the control run proves the probes see a
# leak. (The others would change the host: mounts, namespaces, a daemon, ptrace of the test.)
SAFE_ATTEMPTS = frozenset(
    {
        "tcp_connect_host_loopback",
        "udp_send_host_loopback",
        "unix_connect_host_socket",
        "unix_connect_host_abstract",
        "netlink_route_socket",
        "io_uring_setup",
        "read_victim_environ_secret",
        "read_victim_cmdline_secret",
        "write_state_dir",
        "write_tmp",
        "write_socket_dir_file",
        "socket_names_in_socket_dir",
        "environ_carries_host_variables",
        "read_pythonpath_home",
        "sysctl_open_core_pattern_for_write",
        "sysctl_open_overcommit_for_write",
        "read_proc_kpageflags",
        "read_proc_slabinfo",
        "read_proc_vmallocinfo",
        "read_proc_timer_list",
        "read_proc_keys",
        "read_proc_key_users",
        "read_global_stats",
        "inotify_on_bound_tree",
        "tmpfs_without_size_cap",
        "fill_dev_shm_past_cap",
        "fallocate_inherited_descriptor",
        "write_inherited_descriptor",
        "output_flood_with_secret",
        "fork_past_pids_ceiling",
        "raise_core_dump_limit",
        "directory_descriptor_escape",
    }
)
ROOT_ONLY_READS = (
    "kpageflags",
    "slabinfo",
    "vmallocinfo",
    "timer_list",
    "keys",
    "key_users",
    "sched_debug",
    "kallsyms_addresses",
)
GLOBAL_STATS = (
    "/proc/interrupts",
    "/proc/vmstat",
    "/proc/diskstats",
    "/proc/locks",
    "/proc/softirqs",
    "/proc/zoneinfo",
    "/proc/schedstat",
    "/proc/pressure/cpu",
)


def _syscall(name: str, *args: object) -> str:
    """Call a raw syscall; return 'ok=<value>' or raise OSError with the errno."""
    result = _libc.syscall(ctypes.c_long(_SYS[name]), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return f"{name} returned {result}"


class Attack:
    """Collects the attempts; each returns a detail string on success or raises on failure."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.socket_dir = os.path.dirname(ns.socket)
        self.results: list[dict[str, object]] = []

    def attempt(self, name: str, fn: Callable[[], str], judged_by: str = "engine") -> None:
        if self.ns.safe_only and name not in SAFE_ATTEMPTS:
            return
        try:
            detail = fn()
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome to report
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.results.append({"name": name, "succeeded": ok, "detail": detail[:500], "judged_by": judged_by})

    # --- network ---------------------------------------------------------------------------
    def tcp(self, family: int, addr: tuple) -> str:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(1.5)
            s.connect(addr)
            return f"connected to {addr}"

    def udp_loopback(self) -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(self.ns.marker.encode(), ("127.0.0.1", self.ns.tcp_port))
            return "datagram sent to 127.0.0.1"

    def udp_connect_remote(self) -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.1", 53))  # route lookup only; nothing is sent
            return f"UDP route to 10.255.255.1 via {s.getsockname()}"

    def dns(self) -> str:
        infos = socket.getaddrinfo("veil-hostile-test.example.com", 443)
        return f"resolved {infos[0][4]}"

    def raw(self, family: int, kind: int, proto: int) -> str:
        socket.socket(family, kind, proto).close()
        return f"opened socket family={family} type={kind}"

    def unix_connect(self, address: str | bytes) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.5)
            s.connect(address)
            try:
                s.sendall(self.ns.marker.encode())
            except OSError:
                pass  # the host hung up first: connecting was the leak
            return f"connected to Unix socket {address!r}"

    def interfaces(self) -> str:
        names = [name for _, name in socket.if_nameindex() if name != "lo"]
        if not names:
            raise OSError("only loopback: no interface to leave through")
        return f"interfaces: {names}"

    # --- kernel surface ------------------------------------------------------------------------
    def io_uring(self) -> str:
        params = ctypes.create_string_buffer(120)
        return _syscall("io_uring_setup", ctypes.c_uint(8), params)

    def ptrace_child(self) -> str:
        pid = os.fork()
        if pid == 0:  # the child asks to be traced: exit 0 when the kernel allowed it
            code = 0 if _libc.syscall(ctypes.c_long(_SYS["ptrace"]), 0, 0, 0, 0) == 0 else 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(errno.EPERM, "PTRACE_TRACEME refused")
        return "PTRACE_TRACEME allowed"

    def ptrace_attach(self, pid: int) -> str:
        return _syscall("ptrace", ctypes.c_long(16), ctypes.c_long(pid), None, None)  # ATTACH

    def unshare_net(self) -> str:
        return _syscall("unshare", ctypes.c_int(0x40000000))

    def unshare_user(self) -> str:
        return _syscall("unshare", ctypes.c_int(0x10000000))

    def bpf(self) -> str:
        attr = ctypes.create_string_buffer(128)
        return _syscall("bpf", ctypes.c_int(0), attr, ctypes.c_uint(128))  # BPF_MAP_CREATE

    def mount_tmpfs(self) -> str:
        return _syscall("mount", b"none", b"/tmp", b"tmpfs", ctypes.c_ulong(0), None)

    # --- the host kernel's root-only files (issue 15.1) -------------------------------------
    def open_for_write(self, path: str) -> str:
        fd = os.open(path, os.O_WRONLY)  # opened only: nothing is ever written to a sysctl
        os.close(fd)
        return f"opened {path} for writing (a host sysctl: root on the host)"

    def read_root_only(self, which: str) -> str:
        if which == "kallsyms_addresses":
            with open("/proc/kallsyms") as f:
                for line in f:
                    if not line.startswith("0000000000000000"):
                        return f"kernel addresses visible: {line.split()[0]}"
            raise PermissionError("only zeroed addresses (kptr_restrict)")
        path = "/proc/key-users" if which == "key_users" else f"/proc/{which}"
        with open(path, "rb") as f:
            data = f.read(4096)
        lines = [ln for ln in data.splitlines() if ln.strip()]
        if which in ("slabinfo", "timer_list", "sched_debug") and len(lines) < 3:
            raise PermissionError(f"{path} read, but empty")
        if not data:
            raise PermissionError(f"{path} is empty (nothing of anyone else's)")
        return f"read {len(data)} bytes of {path}: {data[:60]!r}"

    def global_stats(self) -> str:
        readable = []
        for path in GLOBAL_STATS:
            try:
                with open(path, "rb") as f:
                    if f.read(256):
                        readable.append(path)
            except OSError:
                continue
        if not readable:
            raise PermissionError("no global statistics readable")
        return f"host-wide statistics readable: {readable}"

    def inotify(self) -> str:
        fd = _libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 refused")
        try:
            wd = _libc.inotify_add_watch(fd, sys.prefix.encode(), 0x00000020 | 0x00000001)
            if wd < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch refused")
            return f"watching {sys.prefix} (shared with other sandboxes) for opens and reads"
        finally:
            os.close(fd)

    # --- other processes -----------------------------------------------------------------------
    def read_proc(self, pid: int, what: str, needle: str | None) -> str:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            data = f.read(1 << 16)
        if needle is not None and needle.encode() not in data:
            raise PermissionError(f"read {len(data)} bytes of /proc/{pid}/{what}, no secret")
        return f"read {len(data)} bytes of /proc/{pid}/{what}"

    def signal(self, pid: int) -> str:
        os.kill(pid, 0)
        return f"can signal pid {pid}"

    # --- the host's environment and files (issue 9.5) -----------------------------------------
    def environ(self) -> str:
        found = [k for k, v in os.environ.items() if k.startswith("VEIL_") or k == "PYTHONPATH" or self.ns.marker in v]
        if found:
            return f"host variables in the engine's environment: {found}"
        raise PermissionError(f"environment holds only {sorted(os.environ)}")

    def pythonpath_home(self) -> str:
        with open(os.path.join(self.ns.secret_home, "secret.txt")) as f:
            if self.ns.marker in f.read():
                return f"read {self.ns.secret_home}/secret.txt (a PYTHONPATH entry)"
        raise PermissionError("no secret")

    # --- persistence ---------------------------------------------------------------------------
    def write(self, path: str) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(self.ns.marker)
        return f"wrote {path} (inside the sandbox)"

    def mkfifo(self, path: str) -> str:
        os.mkfifo(path)
        return f"made fifo {path}"

    def symlink(self, path: str) -> str:
        os.symlink("/etc/passwd", path)
        return f"made symlink {path}"

    def socket_names(self) -> str:
        """Sockets are allowed in the socket directory; their *names* could carry a prompt."""
        for i in range(3):
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(os.path.join(self.socket_dir, f"{self.ns.marker}-{i}"))
        return f"bound 3 sockets named after the secret in {self.socket_dir}"

    def daemon(self) -> str:
        """Double fork into a new session and exec a sleeper that carries the marker."""
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
            except OSError:
                pass
            if os.fork() == 0:
                devnull = os.open("/dev/null", os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                code = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(120)"
                os.execv(sys.executable, [sys.executable, "-c", code, self.ns.marker])
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.2)
        return "daemon started (the host checks whether it outlives the sandbox)"

    # --- resource claims (issue 15.7) -----------------------------------------------------------
    def tmpfs_caps(self) -> str:
        """Any writable memory file system bigger than the 1 GiB the docs promise is uncapped."""
        uncapped = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields, _, fs = line.partition(" - ")
                parts, kind = fields.split(), fs.split()[0]
                point = parts[4].encode().decode("unicode_escape")
                if (
                    kind in ("tmpfs", "devtmpfs") and "rw" in parts[5].split(",") and os.path.isdir(point)
                ):  # a bound device node holds no files
                    try:
                        st = os.statvfs(point)
                    except OSError:
                        continue
                    if st.f_blocks * st.f_frsize > (1 << 30) + MIB:
                        uncapped.append(f"{point}={st.f_blocks * st.f_frsize >> 20}MiB")
        if uncapped:
            return f"uncapped memory file systems: {uncapped}"
        raise PermissionError("every writable tmpfs is capped")

    def fill_dev_shm(self) -> str:
        path = f"/dev/shm/{self.ns.marker}"
        written = 0
        try:
            with open(path, "wb") as f:
                chunk = b"\0" * MIB
                while written < 80 * MIB:
                    f.write(chunk)
                    written += MIB
                f.flush()
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass
        return f"wrote {written >> 20} MiB to /dev/shm (past a 64 MiB cap)"

    def _regular_descriptors(self) -> list[int]:
        found = []
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    found.append(fd)
            except OSError:
                continue
        return found

    def fallocate_inherited(self) -> str:
        for fd in self._regular_descriptors():
            try:
                os.posix_fallocate(fd, 0, 256 * MIB)
                return f"reserved 256 MiB through inherited descriptor {fd}"
            except OSError:
                continue
        raise PermissionError("no inherited descriptor can be grown")

    def write_inherited(self) -> str:
        for fd in self._regular_descriptors():
            for path in (None, f"/proc/self/fd/{fd}"):  # the descriptor, then reopened
                try:
                    target = fd if path is None else os.open(path, os.O_WRONLY)
                    try:
                        os.pwrite(target, self.ns.marker.encode(), 0)
                    finally:
                        if path is not None:
                            os.close(target)
                    return f"wrote the secret through descriptor {fd} ({path or 'as inherited'})"
                except OSError:
                    continue
        raise PermissionError("no inherited file is writable")

    def output_flood(self) -> str:
        """Prompts into stdout/stderr, as plain lines and disguised as a fixed message."""
        line = f"{self.ns.marker} " * 16 + "\n"
        for stream in (sys.stdout, sys.stderr):
            stream.write(f"veil-engine: serving {self.ns.marker}\n")
            stream.write(line * (2 * MIB // len(line)))
            stream.write(self.ns.marker * 10000 + "\n")  # one over-long line
            stream.flush()
        return "wrote 4 MiB carrying the secret to stdout and stderr (the host judges)"

    def fork_past_pids(self) -> str:
        children, limit = [], self.ns.pids_max + 64
        try:
            for _ in range(limit):
                pid = os.fork()
                if pid == 0:
                    signal.pause()
                    os._exit(0)
                children.append(pid)
        except OSError as exc:
            raise PermissionError(f"fork failed after {len(children)} children: {exc}") from None
        finally:
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            for pid in children:
                os.waitpid(pid, 0)
        return f"forked {limit} processes past a ceiling of {self.ns.pids_max}"

    def core_limit(self) -> str:
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
        except (OSError, ValueError) as exc:
            raise PermissionError(f"RLIMIT_CORE stays ({soft}, {hard}): {exc}") from None
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if soft == 0:
            raise PermissionError("RLIMIT_CORE is 0 hard: no core dump can be written")
        return f"core dumps enabled again (RLIMIT_CORE {soft})"

    def directory_escape(self) -> str:
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                    try:
                        return f"walked out through descriptor {fd}: {os.listdir(parent)[:5]}"
                    finally:
                        os.close(parent)
            except OSError:
                continue
        raise PermissionError("no inherited directory descriptor")

    def run(self) -> list[dict[str, object]]:
        ns, a = self.ns, self.attempt
        host = "host"
        a("output_flood_with_secret", self.output_flood, host)
        a("tcp_connect_host_loopback", lambda: self.tcp(socket.AF_INET, ("127.0.0.1", ns.tcp_port)))
        a("tcp_connect_remote_10.255.255.1", lambda: self.tcp(socket.AF_INET, ("10.255.255.1", 80)))
        a("tcp6_connect_loopback", lambda: self.tcp(socket.AF_INET6, ("::1", ns.tcp_port)))
        a("udp_send_host_loopback", self.udp_loopback)
        a("udp_connect_remote", self.udp_connect_remote)
        a("dns_resolution", self.dns)
        a("network_interface_other_than_lo", self.interfaces)
        a("raw_icmp_socket", lambda: self.raw(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        a("packet_socket", lambda: self.raw(socket.AF_PACKET, socket.SOCK_RAW, 0))
        a("netlink_route_socket", lambda: self.raw(socket.AF_NETLINK, socket.SOCK_RAW, 0))
        a("vsock_socket", lambda: self.raw(40, socket.SOCK_STREAM, 0))
        a("unix_connect_host_socket", lambda: self.unix_connect(ns.host_socket))
        a("unix_connect_host_abstract", lambda: self.unix_connect(b"\0" + ns.abstract.encode()))
        a("unix_connect_syslog_/dev/log", lambda: self.unix_connect("/dev/log"))
        a("io_uring_setup", self.io_uring)
        a("ptrace_traceme", self.ptrace_child)
        a("ptrace_attach_parent", lambda: self.ptrace_attach(os.getppid()))
        a("unshare_net", self.unshare_net)
        a("unshare_user", self.unshare_user)
        a("bpf_map_create", self.bpf)
        a("mount_tmpfs", self.mount_tmpfs)
        a("sysctl_open_core_pattern_for_write", lambda: self.open_for_write("/proc/sys/kernel/core_pattern"))
        a("sysctl_open_overcommit_for_write", lambda: self.open_for_write("/proc/sys/vm/overcommit_memory"))
        a("sysrq_trigger_open_for_write", lambda: self.open_for_write("/proc/sysrq-trigger"))
        for which in ROOT_ONLY_READS:
            a(f"read_proc_{which}", lambda w=which: self.read_root_only(w))
        a("read_global_stats", self.global_stats)
        a("inotify_on_bound_tree", self.inotify)
        a("read_host_pid_environ", lambda: self.read_proc(ns.host_pid, "environ", None))
        a("read_host_pid_mem_maps", lambda: self.read_proc(ns.host_pid, "maps", None))
        a("read_victim_environ_secret", lambda: self.read_proc(ns.victim_pid, "environ", ns.marker))
        a("read_victim_cmdline_secret", lambda: self.read_proc(ns.victim_pid, "cmdline", ns.marker))
        a("read_pid1_environ_secret", lambda: self.read_proc(1, "environ", ns.marker))
        a("read_parent_environ_secret", lambda: self.read_proc(os.getppid(), "environ", ns.marker))
        a("signal_victim", lambda: self.signal(ns.victim_pid))
        a("environ_carries_host_variables", self.environ)
        a("read_pythonpath_home", self.pythonpath_home)
        a("write_model_dir", lambda: self.write(f"{ns.model_dir}/{ns.marker}"), host)
        a("write_state_dir", lambda: self.write(f"{ns.state_dir}/{ns.marker}"), host)
        a("write_tmp", lambda: self.write(f"/tmp/{ns.marker}"), host)
        a("write_var_tmp", lambda: self.write(f"/var/tmp/{ns.marker}"), host)
        a("write_dev_shm", lambda: self.write(f"/dev/shm/{ns.marker}"), host)
        sd = self.socket_dir
        a("write_socket_dir_file", lambda: self.write(f"{sd}/{ns.marker}.txt"), host)
        a("write_socket_dir_subdir", lambda: self.write(f"{sd}/{ns.marker}.d/x"), host)
        a("mkfifo_socket_dir", lambda: self.mkfifo(f"{sd}/{ns.marker}.fifo"), host)
        a("symlink_socket_dir", lambda: self.symlink(f"{sd}/{ns.marker}.lnk"), host)
        a("socket_names_in_socket_dir", self.socket_names, host)
        a("tmpfs_without_size_cap", self.tmpfs_caps)
        a("fill_dev_shm_past_cap", self.fill_dev_shm)
        a("fallocate_inherited_descriptor", self.fallocate_inherited)
        a("write_inherited_descriptor", self.write_inherited)
        a("directory_descriptor_escape", self.directory_escape)
        a("fork_past_pids_ceiling", self.fork_past_pids)
        a("raise_core_dump_limit", self.core_limit)
        a("daemon_outlives_sandbox", self.daemon, host)
        return self.results


def memory_past_ceiling(limit: int) -> dict[str, object]:
    """Allocate (and touch) 96 MiB more than ``limit`` in a child; did it survive?"""
    pid = os.fork()
    if pid == 0:
        try:
            blocks = [bytearray(16 * MIB) for _ in range((limit + 96 * MIB) // (16 * MIB))]
            os._exit(0 if blocks else 1)
        except MemoryError:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        detail = f"the allocating child was killed by signal {os.WTERMSIG(status)}"
    else:
        detail = f"the allocating child exited with {os.WEXITSTATUS(status)}"
    survived = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return {"name": "memory_past_ceiling", "succeeded": survived, "detail": detail, "judged_by": "engine"}


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def handler(report: dict[str, object], memory_max: int) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/report":
                self._send(report)
            else:
                self._send({"ok": True, "path": self.path, "pid": os.getpid()})

        def do_POST(self) -> None:  # noqa: N802
            self._send(memory_past_ceiling(memory_max))

        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def serve(path: str, report: dict[str, object], memory_max: int) -> None:
    """Serve until killed; /health answering is the 'ready' signal."""
    if os.path.exists(path):
        os.unlink(path)
    with _UnixHTTPServer(path, handler(report, memory_max)) as server:
        server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser()
    for flag in ("--socket",):
        parser.add_argument(flag, required=True)
    for flag in ("--n-ctx", "--threads", "--parent-pid", "--model", "--model-id"):
        parser.add_argument(flag)  # what EngineProcess sends every engine
    for name in ("marker", "model-dir", "state-dir", "host-socket", "abstract", "secret-home"):
        parser.add_argument(f"--{name}", default="")
    for name in ("host-pid", "victim-pid", "tcp-port", "pids-max", "memory-max"):
        parser.add_argument(f"--{name}", type=int, default=0)
    parser.add_argument("--safe-only", action="store_true")
    parser.add_argument("--serve-only", action="store_true")
    ns = parser.parse_args()
    fcntl.fcntl(1, fcntl.F_GETFL)  # fail fast if stdio is closed
    report = {"attempts": [] if ns.serve_only else Attack(ns).run()}
    serve(ns.socket, report, ns.memory_max)
    return 0


if __name__ == "__main__":
    sys.exit(main())
