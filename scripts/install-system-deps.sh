#!/bin/sh
# Install the Debian packages a Veil worker needs, only those missing (idempotent, quick when done).
# Test-only packages (tcpdump, postgresql) are in install-test-deps.sh.
#   bubblewrap   the engine sandbox (namespaces)            -> veil.sandbox bubblewrap profile
#   libseccomp2  the seccomp filter compiler (via pyseccomp) -> veil.sandbox.seccomp
#   haproxy      the load balancer in front of `veil up --workers N` / `--coordinators N` and the
#                shipped RFC 9458 relay (deploy/haproxy/; tests/test_haproxy_*.py)
#   runsc        gVisor, the second sandbox profile (optional: not every distribution ships it;
#                without it a gvisor profile is refused with reason sandbox.unavailable)
# Runs as root in CI (make); elsewhere it uses sudo when present.
set -eu

REQUIRED="bubblewrap libseccomp2 haproxy"
OPTIONAL="runsc"

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing_required=""
missing_optional=""
for pkg in $REQUIRED; do installed "$pkg" || missing_required="$missing_required $pkg"; done
for pkg in $OPTIONAL; do installed "$pkg" || missing_optional="$missing_optional $pkg"; done

if [ -z "$missing_required$missing_optional" ]; then
    echo "install-system-deps: all present ($REQUIRED $OPTIONAL)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: not Debian/Ubuntu; install by hand:$missing_required$missing_optional" >&2
    [ -z "$missing_required" ]
    exit
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-system-deps: need root to install:$missing_required$missing_optional" >&2
        [ -z "$missing_required" ]
        exit
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [ -n "$missing_required" ]; then
    echo "install-system-deps: installing$missing_required"
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing_required
fi
for pkg in $missing_optional; do
    echo "install-system-deps: installing optional $pkg"
    $SUDO apt-get install -y -qq --no-install-recommends "$pkg" \
        || echo "install-system-deps: optional $pkg unavailable here; its profile will be refused" >&2
done
