"""A hostile "engine": tries every way out of the sandbox it can think of, and says how it went.

Run inside the sandbox by tests/test_sandbox_hostile.py. Standard library only, so it also runs
where the engine's dependencies are absent. Two modes:

* ``attack --marker M --host-pid P --victim-pid V --tcp-port N --model-dir D --state-dir S
  --socket-dir K --host-socket H --abstract A`` prints one JSON object: a list of attempts, each
  ``{"name", "succeeded", "detail"}``. ``succeeded`` is the engine's own view; attempts whose
  effect only the host can judge (files left behind, a daemon) are marked ``"judged_by": "host"``.
* ``serve --socket PATH`` serves a tiny HTTP API on a Unix socket (the positive test).

It never sends traffic anywhere real: remote addresses are only ``connect()``-ed, with a timeout.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import http.server
import json
import os
import socket
import socketserver
import sys
import time
from collections.abc import Callable

_libc = ctypes.CDLL(None, use_errno=True)
_SYS = {"io_uring_setup": 425, "ptrace": 101, "unshare": 272, "bpf": 321, "keyctl": 250,
        "perf_event_open": 298, "process_vm_readv": 310, "mount": 165}  # x86_64 numbers


def _syscall(name: str, *args: object) -> str:
    """Call a raw syscall; return 'ok=<value>' or raise OSError with the errno."""
    result = _libc.syscall(ctypes.c_long(_SYS[name]), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return f"{name} returned {result}"


# Attempts harmless to run *outside* a sandbox: the control run proves the probes can see a leak.
SAFE_ATTEMPTS = frozenset({
    "tcp_connect_host_loopback", "udp_send_host_loopback", "unix_connect_host_socket",
    "unix_connect_host_abstract", "netlink_route_socket", "io_uring_setup",
    "read_victim_environ_secret", "read_victim_cmdline_secret", "write_state_dir", "write_tmp",
    "write_socket_dir_file",
})


class Attack:
    """Collects the attempts; each returns a detail string on success or raises on failure."""

    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.results: list[dict[str, object]] = []

    def attempt(self, name: str, fn: Callable[[], str], judged_by: str = "engine") -> None:
        if self.ns.safe_only and name not in SAFE_ATTEMPTS:
            return
        try:
            detail = fn()
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome to report
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.results.append(
            {"name": name, "succeeded": ok, "detail": detail, "judged_by": judged_by})

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
                code = ("import signal, time; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
                        "time.sleep(120)")
                os.execv(sys.executable, [sys.executable, "-c", code, self.ns.marker])
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.2)
        return "daemon started (the host checks whether it outlives the sandbox)"

    def run(self) -> list[dict[str, object]]:
        ns, a = self.ns, self.attempt
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
        a("read_host_pid_environ", lambda: self.read_proc(ns.host_pid, "environ", None))
        a("read_host_pid_mem_maps", lambda: self.read_proc(ns.host_pid, "maps", None))
        a("read_victim_environ_secret", lambda: self.read_proc(ns.victim_pid, "environ", ns.marker))
        a("read_victim_cmdline_secret", lambda: self.read_proc(ns.victim_pid, "cmdline", ns.marker))
        a("read_pid1_environ_secret", lambda: self.read_proc(1, "environ", ns.marker))
        a("read_parent_environ_secret", lambda: self.read_proc(os.getppid(), "environ", ns.marker))
        a("signal_victim", lambda: self.signal(ns.victim_pid))
        host = "host"
        a("write_model_dir", lambda: self.write(f"{ns.model_dir}/{ns.marker}"), host)
        a("write_state_dir", lambda: self.write(f"{ns.state_dir}/{ns.marker}"), host)
        a("write_tmp", lambda: self.write(f"/tmp/{ns.marker}"), host)
        a("write_var_tmp", lambda: self.write(f"/var/tmp/{ns.marker}"), host)
        a("write_dev_shm", lambda: self.write(f"/dev/shm/{ns.marker}"), host)
        a("write_socket_dir_file", lambda: self.write(f"{ns.socket_dir}/{ns.marker}.txt"), host)
        a("write_socket_dir_subdir", lambda: self.write(f"{ns.socket_dir}/{ns.marker}.d/x"), host)
        a("mkfifo_socket_dir", lambda: self.mkfifo(f"{ns.socket_dir}/{ns.marker}.fifo"), host)
        a("symlink_socket_dir", lambda: self.symlink(f"{ns.socket_dir}/{ns.marker}.lnk"), host)
        a("daemon_outlives_sandbox", self.daemon, host)
        return self.results


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"ok": True, "path": self.path, "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *args: object) -> None:
        pass


def serve(path: str) -> None:
    """Serve until killed; the socket file appearing is the 'ready' signal."""
    if os.path.exists(path):
        os.unlink(path)
    with _UnixHTTPServer(path, _Handler) as server:
        server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    atk = sub.add_parser("attack")
    for name in ("marker", "model-dir", "state-dir", "socket-dir", "host-socket", "abstract"):
        atk.add_argument(f"--{name}", required=True)
    for name in ("host-pid", "victim-pid", "tcp-port"):
        atk.add_argument(f"--{name}", type=int, required=True)
    atk.add_argument("--safe-only", action="store_true")
    srv = sub.add_parser("serve")
    srv.add_argument("--socket", required=True)
    ns = parser.parse_args()
    if ns.mode == "serve":
        serve(ns.socket)
        return 0
    print(json.dumps({"attempts": Attack(ns).run()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
