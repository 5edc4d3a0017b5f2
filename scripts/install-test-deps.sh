#!/bin/sh
# Install the Debian packages Veil's *tests* need, only those missing (idempotent, quick when done).
#   tcpdump      loopback capture for the whole-system canary test (tests/test_canary_system.py:
#                it proves no prompt crosses the wire in the clear; without tcpdump it skips,
#                or fails under VEIL_REQUIRE_CAPTURE=1)
#   postgresql   a private PostgreSQL server for tests/test_coordinator_postgres.py (coordinators
#                sharing one database). The test starts its own server with initdb/pg_ctl as the
#                `postgres` user in a temporary directory; the distribution's cluster is not used.
#                Without the binaries that test is skipped (unless VEIL_REQUIRE_POSTGRES=1).
# Without root or apt these are reported and the tests needing them skip (CI requires them).
# Runs as root in CI (make); elsewhere it uses sudo when present.
set -eu

REQUIRED="tcpdump postgresql"

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=""
for pkg in $REQUIRED; do installed "$pkg" || missing="$missing $pkg"; done

if [ -z "$missing" ]; then
    echo "install-test-deps: all present ($REQUIRED)"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: not Debian/Ubuntu; install by hand:$missing (tests needing it will skip)" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-deps: need root to install:$missing (tests needing it will skip)" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
echo "install-test-deps: installing$missing"
# The package's post-install creates and starts a default cluster where a service manager runs;
# the tests do not use it. policy-rc.d-less containers simply skip the start.
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
