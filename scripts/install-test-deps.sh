#!/bin/sh
# Install the Debian packages Veil's *tests* need, only those missing (idempotent, quick when done).
#   tcpdump      loopback capture for the whole-system canary test (tests/system/test_canary_system.py:
#                it proves no prompt crosses the wire in the clear; without tcpdump it skips,
#                or fails under VEIL_REQUIRE_CAPTURE=1)
#   postgresql   a private PostgreSQL server for tests/test_coordinator_postgres.py (coordinators
#                sharing one database). The test starts its own server with initdb/pg_ctl as the
#                `postgres` user in a temporary directory; the distribution's cluster is not used.
#                Without the binaries that test is skipped (unless VEIL_REQUIRE_POSTGRES=1).
#   nodejs, npm  an independent OHTTP peer for the interop tests (tests/interop/node: @hpke/core
#                and @hpke/hybridkem-x-wing at the versions pinned in its package-lock.json,
#                installed with `npm ci` below). Without Node those tests skip (unless
#                VEIL_REQUIRE_NODE=1).
#   chromium     the real browser tests/test_webpage_browser.py drives through Playwright
#                (executable_path: Playwright's own browser download is not reachable). Without it
#                that test skips (unless VEIL_REQUIRE_BROWSER=1).
# Without root or apt these are reported and the tests needing them skip (CI requires them).
# Runs as root in CI (make); elsewhere it uses sudo when present.
set -eu

REQUIRED="tcpdump postgresql nodejs chromium"
NODE_PEER="$(dirname "$0")/../tests/interop/node"

node_packages() {
    # npm ships with some nodejs builds (NodeSource) and separately on Debian.
    if command -v npm >/dev/null 2>&1; then
        echo "install-test-deps: npm ci in tests/interop/node"
        npm ci --prefix "$NODE_PEER" --no-audit --no-fund --loglevel=error
    else
        echo "install-test-deps: no npm; the Node interop tests will fail until it is installed" >&2
    fi
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=""
for pkg in $REQUIRED; do installed "$pkg" || missing="$missing $pkg"; done

command -v npm >/dev/null 2>&1 || missing="$missing npm"

if [ -z "$missing" ]; then
    echo "install-test-deps: all present ($REQUIRED npm)"
    node_packages
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: not Debian/Ubuntu; install by hand:$missing (tests needing it will skip)" >&2
    node_packages
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-test-deps: need root to install:$missing (tests needing it will skip)" >&2
        node_packages
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
node_packages
